"""Configuration: command-line flags > ``LAKEREC_*`` environment variables > ``lakerec.toml`` > defaults.

The lakehouse root and the allowed roots are resolved here, once, and every path a job writes
is checked against them before anything is written.

Example
-------
>>> s = Settings.resolve(flags={"lakehouse": "/data/lh"}, env={}, toml={})
>>> s.lakehouse
'/data/lh'
>>> s.get("k", flag=None, default=10, cast=int)
10
"""

from __future__ import annotations

import datetime as _dt
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LAKEHOUSE = "./lakehouse"
ENV_PREFIX = "LAKEREC_"


from pipelines.errors import UsageError  # noqa: E402  (re-exported: the jobs import it here)

__all__ = ["DEFAULT_LAKEHOUSE", "ENV_PREFIX", "Settings", "UsageError", "load_toml"]


def load_toml(path: str | os.PathLike | None = None) -> dict:
    """Read ``lakerec.toml`` (``$LAKEREC_CONFIG`` or the current directory); ``{}`` if absent."""
    p = Path(path or os.environ.get(f"{ENV_PREFIX}CONFIG", "lakerec.toml"))
    if not p.is_file():
        return {}
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: not valid TOML ({e})") from None


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
        probe = cls(lakehouse="", allowed_roots=(), env=env, toml=toml, section=section)
        lakehouse = probe.get("lakehouse", flag=flags.get("lakehouse"), default=DEFAULT_LAKEHOUSE)
        lakehouse = str(Path(lakehouse).expanduser().resolve())
        extra = probe.get("allowed_roots", flag=None, default=())
        if isinstance(extra, str):
            extra = [p for p in extra.split(os.pathsep) if p]
        roots = (lakehouse, *(str(Path(p).expanduser().resolve()) for p in extra))
        return cls(lakehouse=lakehouse, allowed_roots=roots, env=env, toml=toml, section=section)

    def get(self, name: str, *, flag: Any, default: Any, cast: Callable[[Any], Any] | None = None):
        """Resolve one setting: ``flag`` if given, else ``LAKEREC_<NAME>``, else toml, else default."""
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
        if cast is None:
            return value
        try:
            return cast(value)
        except (TypeError, ValueError):
            raise UsageError(f"bad value for {name}: {value!r}") from None

    def path(self, *parts: str) -> str:
        """A path under the lakehouse root."""
        return os.path.join(self.lakehouse, *parts)

    def check_writable(self, path: str | os.PathLike, what: str = "path") -> str:
        """Resolve ``path`` and refuse it unless it lies under an allowed root."""
        resolved = str(Path(path).expanduser().resolve())
        for root in self.allowed_roots:
            if resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep):
                return resolved
        raise UsageError(
            f"{what} {resolved} is outside the lakehouse {self.lakehouse} "
            f"(allow more roots with {ENV_PREFIX}ALLOWED_ROOTS)"
        )


def parse_date(text: str) -> _dt.date:
    """Parse ``YYYY-MM-DD`` strictly; anything else is a :class:`UsageError`."""
    try:
        if len(text) != 10:
            raise ValueError
        return _dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise UsageError(f"not a date (expected YYYY-MM-DD): {text!r}") from None


def positive_int(text: Any) -> int:
    v = int(text)
    if v <= 0:
        raise ValueError(text)
    return v


def nonneg_int(text: Any) -> int:
    v = int(text)
    if v < 0:
        raise ValueError(text)
    return v


def positive_float(text: Any) -> float:
    v = float(text)
    if not v > 0:  # also refuses nan
        raise ValueError(text)
    return v


def fraction(text: Any) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise ValueError(text)
    return v
