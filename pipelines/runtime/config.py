"""Configuration: command-line flags > ``LAKEREC_*`` environment variables > ``lakerec.toml`` > defaults.

The lakehouse root and the allowed roots are resolved here, once, and every path a job writes
is checked against them before anything is written.

Example
-------
>>> s = Settings.resolve(flags={"lakehouse": "/data/lh"}, env={}, toml={}, section="score")
>>> s.lakehouse
'/data/lh'
>>> s.get("k", flag=None, default=10, cast=positive_int)
10
>>> Settings.resolve(flags={}, env={"LAKEREC_K": "10.9"}, toml={}, section="score").get(
...     "k", flag=None, default=10, cast=positive_int)
Traceback (most recent call last):
...
pipelines.errors.UsageError: bad value for k: '10.9' (an integer)
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LAKEHOUSE = "./lakehouse"
ENV_PREFIX = "LAKEREC_"


from pipelines.errors import UsageError  # noqa: E402  (re-exported: the jobs import it here)

__all__ = ["CONFIG_KEYS", "DEFAULT_LAKEHOUSE", "ENV_PREFIX", "Settings", "UsageError",
           "check_toml", "load_toml"]

# Every key ``lakerec.toml`` may hold, declared once: ``[section]`` per command, and the keys
# every command shares. A top-level key is a default for every command that reads it, so any
# section's key may also stand at the top level. Settings.get refuses a name not declared
# here (a programming error caught by the tests); check_toml refuses a file with any other key.
SHARED_KEYS = frozenset({"lakehouse", "allowed_roots"})
_TRAIN = frozenset({"as_of", "trainer", "window_days", "holdout_days", "rank", "alpha", "reg",
                    "max_iter", "seed", "k", "weights", "half_life_days", "ease_lambda",
                    "ease_max_items", "min_eval_users", "max_holdout_days", "promote_if",
                    "tune", "tune_trials", "tune_minutes"})
_DATASET = frozenset({"users", "items", "events", "days", "clusters", "start", "seed",
                   "dirty_fraction", "drift", "item_lifetime_days", "churn", "dynamics"})
_KAFKA = frozenset({"bootstrap", "topic", "security_protocol", "sasl_mechanism", "ssl_cafile",
                    "ssl_certfile", "ssl_keyfile"})
CONFIG_KEYS: Mapping[str, frozenset[str]] = {
    "train": _TRAIN,
    "score": frozenset({"k", "model_version", "popularity_days", "new_item_slots", "store"}),
    "check": frozenset({"k"}),
    "place": frozenset({"model_version", "encoder_version", "content_reg"}),
    "embed": frozenset({"encoder_dir", "variant", "encoder_version", "batch_size", "threads",
                        "device", "similar", "holdout", "content_reg", "k"}),
    "generate": _DATASET | {"out"},
    "import_movielens": frozenset({"out"}),
    "ingest": frozenset({"source", "catalog", "dedup_horizon_days"}),
    "stream": _KAFKA | {"query_name", "checkpoint", "trigger_seconds", "starting_offsets",
                        "max_offsets_per_trigger", "k", "max_restarts", "new_item_slots",
                        "dedup_horizon_days", "state_dir", "store"},
    "publish": frozenset({"store", "chunk"}),
    "serve": _KAFKA | {"host", "port", "store", "workers", "exposures_topic",
                       "exposure_buffer", "exposure_flush_ms", "variant"},
    "produce": _KAFKA,
    "broker": frozenset(),
    "demo": _DATASET | _TRAIN,
    "sql": frozenset(),
    "doctor": frozenset(),
    "restore": frozenset(),
    "models": frozenset(),
    # the alert thresholds: pipelines.ops.status.Thresholds (a test holds the two equal)
    "status": (_KAFKA - {"topic"}) | frozenset({"max_list_age_hours", "max_quarantine_rate",
                         "max_fallback_share", "max_coverage_drop", "max_stream_lag"}),
    "history": frozenset(),
    "report": frozenset({"out", "days", "snapshots"}),
    "maintain": frozenset({"retention_hours"}),
    "compact": frozenset(),
}
_ALL_KEYS = SHARED_KEYS.union(*CONFIG_KEYS.values())
# Folders a job may never write to: the system's own (and all below them), and folders that
# hold everyone's data (themselves; a folder below them, e.g. /var/data, is fine).
_SYSTEM_TREES = frozenset({"/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64",
                           "/libx32", "/proc", "/sbin", "/sys", "/usr"})
_SHARED_DIRS = frozenset({"/", "/home", "/root", "/run", "/snap", "/srv", "/tmp", "/var",
                          "/opt", "/mnt", "/media"})


def load_toml(path: str | os.PathLike | None = None) -> dict:
    """Read ``lakerec.toml`` (``$LAKEREC_CONFIG`` or the current directory); ``{}`` if absent."""
    p = Path(path or os.environ.get(f"{ENV_PREFIX}CONFIG", "lakerec.toml"))
    if not p.is_file():
        return {}
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot be read ({e})") from None
    check_toml(data, str(p))
    return data


def check_toml(data: Mapping[str, Any], where: str = "lakerec.toml") -> None:
    """Refuse a key :data:`CONFIG_KEYS` does not declare, naming it (exit 2)."""
    for key, value in data.items():
        if key in CONFIG_KEYS:
            if not isinstance(value, dict):
                raise UsageError(f"{where}: [{key}] must be a table of settings")
            for sub in value:
                if sub not in CONFIG_KEYS[key] and sub not in SHARED_KEYS:
                    known = ", ".join(sorted(CONFIG_KEYS[key] | SHARED_KEYS))
                    raise UsageError(f"{where}: unknown key {sub!r} in [{key}] "
                                     f"(known: {known})")
        elif key == "lakehouse" and not isinstance(value, str):
            raise UsageError(f"{where}: lakehouse must be a string (a folder path)")
        elif key == "allowed_roots":
            try:
                _path_list(value)
            except _RefusedError as e:
                raise UsageError(f"{where}: allowed_roots must be {e}") from None
        elif key not in _ALL_KEYS:
            raise UsageError(f"{where}: unknown key {key!r} (sections: "
                             f"{', '.join(sorted(CONFIG_KEYS))}; see the README, Configuration)")


@dataclass(frozen=True)
class Settings:
    """Resolved settings shared by every job.

    ``section`` names the job's own table in ``lakerec.toml`` (``[train]``, ``[score]`` ...),
    looked up before the top level.
    """

    lakehouse: str
    allowed_roots: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False, default_factory=dict)
    toml: Mapping[str, Any] = field(repr=False, default_factory=dict)
    section: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        toml: Mapping[str, Any] | None = None,
        section: str | None = None,
    ) -> Settings:
        flags = flags or {}
        env = dict(os.environ) if env is None else env
        toml = load_toml() if toml is None else toml
        check_toml(toml)
        probe = cls(lakehouse="", allowed_roots=(), env=env, toml=toml, section=section)
        lakehouse = probe.get("lakehouse", flag=flags.get("lakehouse"), default=DEFAULT_LAKEHOUSE,
                              cast=text)
        lakehouse = str(Path(lakehouse).expanduser().resolve())
        extra = probe.get("allowed_roots", flag=None, default=(), cast=_path_list)
        roots = (lakehouse, *(_allowed_root(p) for p in extra))
        return cls(lakehouse=lakehouse, allowed_roots=roots, env=env, toml=toml, section=section)

    def get(self, name: str, *, flag: Any, default: Any, cast: Callable[[Any], Any] | None = None):
        """Resolve one setting: ``flag`` if given, else ``LAKEREC_<NAME>``, else toml, else default.

        ``cast`` checks and converts the value (a :class:`UsageError` names the setting when
        it refuses); without one the value must be a string. Defaults are not cast.
        """
        if name not in SHARED_KEYS and name not in CONFIG_KEYS.get(self.section or "", ()):
            raise AssertionError(f"setting {name!r} of [{self.section}] is not declared in "
                                 "pipelines.runtime.config.CONFIG_KEYS")
        if flag is not None:
            value = flag
        elif f"{ENV_PREFIX}{name.upper()}" in self.env:
            value = self.env[f"{ENV_PREFIX}{name.upper()}"]
        elif self.section and name in self.toml.get(self.section, {}):
            value = self.toml[self.section][name]
        elif name in self.toml:
            value = self.toml[name]
        else:
            return default
        try:
            return (cast or text)(value)
        except (TypeError, ValueError) as e:
            why = f" ({e})" if isinstance(e, _RefusedError) else ""
            raise UsageError(f"bad value for {name}: {value!r}{why}") from None

    def path(self, *parts: str) -> str:
        """A path under the lakehouse root."""
        return os.path.join(self.lakehouse, *parts)

    def check_no_escape(self, path: str | os.PathLike, what: str = "path") -> str:
        """Refuse a folder inside the lakehouse that a symlink leads out of the allowed roots
        (a landing folder linked to ``/etc``); a path given outside the lakehouse is the
        caller's choice and stays allowed for reading. Returns the path as given."""
        given = os.path.abspath(os.path.expanduser(path))
        if within(given, self.lakehouse):
            resolved = str(Path(given).resolve())
            if not any(within(resolved, root) for root in self.allowed_roots):
                raise UsageError(f"{what} {given} is a symlink to {resolved}, outside the "
                                 f"lakehouse {self.lakehouse}: refused")
        return given

    def existing_lakehouse(self, *tables: str) -> str:
        """The lakehouse root, refused (a usage error) unless it is one: an existing folder,
        not a system folder, holding a lakerec table or landing zone, and ``tables`` (the
        ones the command reads) among its tables. For the commands that read a lakehouse:
        a mistyped path is an error before anything is written, never a new folder or an
        ``mlflow.db`` in ``/etc``."""
        from schemas.tables import TABLES

        lh = self.lakehouse
        if is_system_folder(lh):
            raise UsageError(f"--lakehouse {lh} is a system folder, not a lakehouse: refused")
        create = ("create one with `lakerec demo`, or `lakerec generate` / `lakerec ingest`")
        if not os.path.isdir(lh):
            raise UsageError(f"no lakehouse at {lh} ({create})")
        present = {t for t in TABLES if os.path.isdir(os.path.join(lh, t, "_delta_log"))}
        if not present and not os.path.isdir(os.path.join(lh, "landing")):
            raise UsageError(f"{lh} is not a lakehouse: it holds no lakerec table ({create})")
        missing = [t for t in tables if t not in present]
        if missing:
            raise UsageError(f"the lakehouse {lh} has no table {', '.join(missing)} yet "
                             "(`lakerec ingest` makes interactions and items, `lakerec score` "
                             "recommendations)")
        return lh

    def check_writable(self, path: str | os.PathLike, what: str = "path") -> str:
        """Resolve ``path`` and refuse it unless it lies under an allowed root."""
        resolved = str(Path(path).expanduser().resolve())
        if is_system_folder(resolved):
            raise UsageError(f"{what} {resolved} is a system folder: refused")
        if any(within(resolved, root) for root in self.allowed_roots):
            return resolved
        raise UsageError(
            f"{what} {resolved} is outside the lakehouse {self.lakehouse} "
            f"(allow more roots with {ENV_PREFIX}ALLOWED_ROOTS)"
        )


def date_value(value: Any) -> _dt.date:
    """A date setting: ``YYYY-MM-DD`` text (flag, env) or a TOML date; never a datetime."""
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        return value
    if isinstance(value, str):
        return parse_date(value)
    raise _RefusedError("a date YYYY-MM-DD")


def parse_date(text: str) -> _dt.date:
    """Parse ``YYYY-MM-DD`` strictly; anything else is a :class:`UsageError`."""
    try:
        if len(text) != 10:
            raise ValueError
        return _dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise UsageError(f"not a date (expected YYYY-MM-DD): {text!r}") from None


def within(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies under it (both resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _RefusedError(ValueError):
    """A value of the right kind that a setting refuses; its message says why."""


def _path_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [p for p in value.split(os.pathsep) if p]
    if isinstance(value, list | tuple) and all(isinstance(p, str) for p in value):
        return list(value)
    raise _RefusedError("a list of folder paths (or a string of them joined by ':')")


def _allowed_root(path: str) -> str:
    """One extra allowed root: an existing folder, never ``/`` or a system folder; logged."""
    import logging

    resolved = str(Path(path).expanduser().resolve())
    if is_system_folder(resolved):
        raise UsageError(f"allowed_roots may not include {resolved}: the whole machine or a "
                         "system folder")
    if not os.path.isdir(resolved):
        raise UsageError(f"allowed_roots: {path!r} is not an existing folder")
    logging.getLogger("lakerec").info("writes allowed under %s (allowed_roots)", resolved)
    return resolved


def is_system_folder(resolved: str) -> bool:
    """``/``, a folder everyone's data lives under (``/home``, ``/var``), or anything in the
    system's own trees (``/etc/cron.d``, ``/usr/local/bin``)."""
    return resolved in _SHARED_DIRS or os.path.dirname(resolved) == resolved or \
        any(within(resolved, d) for d in _SYSTEM_TREES)


def refuse_system_folder(path: str, what: str) -> str:
    """``path`` resolved, unless it is a system folder (:func:`is_system_folder`)."""
    resolved = str(Path(path).expanduser().resolve())
    if is_system_folder(resolved):
        raise UsageError(f"{what} {resolved} is a system folder: refused")
    return resolved


def text(value: Any) -> str:
    """A string setting, as given (a number or a table is refused)."""
    if not isinstance(value, str):
        raise _RefusedError(f"a string, not {type(value).__name__}")
    return value


def integer(value: Any) -> int:
    """An exact integer: ``7``, ``"7"``; never ``7.9``, ``true`` or ``"7.0"``."""
    if isinstance(value, bool):
        raise _RefusedError("an integer, not a boolean")
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise _RefusedError("an integer")
    if not -2**63 <= value < 2**63:  # what Spark, Arrow and Delta can hold
        raise _RefusedError("an integer of at most 64 bits")
    return value


def number(value: Any) -> float:
    """A finite number: ``0.5``, ``"5"``, ``1e-3``; never ``nan``, ``inf`` or ``true``."""
    if isinstance(value, bool):
        raise _RefusedError("a number, not a boolean")
    if not isinstance(value, int | float | str):
        raise _RefusedError("a number")
    try:
        v = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise _RefusedError("a finite number") from None
    if not math.isfinite(v):
        raise _RefusedError("a finite number")
    return v


def positive_int(value: Any) -> int:
    v = integer(value)
    if v <= 0:
        raise _RefusedError("an integer > 0")
    return v


def nonneg_int(value: Any) -> int:
    v = integer(value)
    if v < 0:
        raise _RefusedError("an integer >= 0")
    return v


def positive_float(value: Any) -> float:
    v = number(value)
    if not v > 0:
        raise _RefusedError("a number > 0")
    return v


def nonneg_float(value: Any) -> float:
    v = number(value)
    if v < 0:
        raise _RefusedError("a number >= 0")
    return v


def boolean(value: Any) -> bool:
    """A switch: a TOML boolean, or ``true/false``, ``1/0``, ``yes/no``, ``on/off`` text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "1", "yes", "on"):
            return True
        if word in ("false", "0", "no", "off"):
            return False
    raise _RefusedError("true or false")


def fraction(value: Any) -> float:
    v = number(value)
    if not 0.0 <= v <= 1.0:
        raise _RefusedError("a number in [0, 1]")
    return v
