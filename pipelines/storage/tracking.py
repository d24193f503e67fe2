"""MLflow: the tracking store, training runs, the model registry and the ``champion`` alias.

``MLFLOW_TRACKING_URI`` wins when set; otherwise a SQLite store in the lakehouse
(``sqlite:///<lakehouse>/mlflow.db``) with artifacts under ``<lakehouse>/mlartifacts``.
mlflow is imported inside the functions: importing it costs about 1.5 s.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass

from pipelines.errors import UsageError

log = logging.getLogger(__name__)

EXPERIMENT = "lakerec"
ALS_MODEL = "lakerec-als"
CHAMPION = "champion"


_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def tracking_uri(lakehouse: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{os.path.join(os.path.abspath(lakehouse), 'mlflow.db')}"


def use(lakehouse: str) -> str:
    """Point mlflow's current tracking and registry stores at the lakehouse's; returns the URI.

    The process environment is left as it was: mlflow.set_tracking_uri() exports the URI to
    ``MLFLOW_TRACKING_URI``, which would pin every later lakehouse of this process to the
    first one's store.
    """
    import mlflow

    # per-file progress bars on every artifact download are noise in job logs
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(lakehouse)
    before = {v: os.environ.get(v) for v in _URI_VARS}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for v, old in before.items():
        if old is None:
            os.environ.pop(v, None)
        else:
            os.environ[v] = old
    return uri


# The columns of MLflow's SQL store that hold artifact locations (absolute URIs).
_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
              ("model_versions", "source"), ("model_versions", "storage_location"),
              ("logged_models", "artifact_location"))


def relocate(lakehouse: str) -> str | None:
    """Point the lakehouse's own MLflow store at the artifacts under *this* lakehouse.

    MLflow records artifact locations as absolute URIs. In a copied or moved lakehouse they
    still name the original's folder, and a new run would write its model there: outside the
    lakehouse. When the experiment's location is not this lakehouse's ``mlartifacts``, every
    recorded location under the old root is rewritten to the new one, in one transaction.
    Returns the old root (``None``: nothing to do). Only the embedded store
    (``<lakehouse>/mlflow.db``) is touched, never a ``MLFLOW_TRACKING_URI`` server.
    Cost: one indexed query per call; a rewrite touches each run and model version once.
    """
    import sqlite3

    db_path = os.path.join(lakehouse, "mlflow.db")
    if os.environ.get("MLFLOW_TRACKING_URI") or not os.path.exists(db_path):
        return None
    want = "file://" + os.path.join(os.path.abspath(lakehouse), "mlartifacts")
    con = sqlite3.connect(db_path, timeout=30)
    try:
        row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?",
                          (EXPERIMENT,)).fetchone()
        if row is None or not row[0] or row[0] == want or \
                not row[0].startswith("file://") or not row[0].endswith("/mlartifacts"):
            return None
        old = row[0]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        with con:
            for table, col in _LOCATIONS:
                if table in tables:
                    con.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) "  # noqa: S608
                                f"WHERE {col} LIKE ? ESCAPE '\\'",
                                (want, len(old) + 1, old.replace("%", "\\%")
                                 .replace("_", "\\_") + "%"))
        log.warning("MLflow store of %s pointed at artifacts in %s (a copied lakehouse): "
                    "now at %s", lakehouse, old, want)
        return old
    finally:
        con.close()


def client(lakehouse: str):
    """An ``MlflowClient`` on the lakehouse's store (also set as mlflow's current store)."""
    import mlflow

    relocate(lakehouse)
    uri = use(lakehouse)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(lakehouse: str, name: str = EXPERIMENT) -> str:
    c = client(lakehouse)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = "file://" + os.path.join(os.path.abspath(lakehouse), "mlartifacts")
    try:
        return c.create_experiment(name, artifact_location=artifacts)
    except Exception:  # created concurrently by another job
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def registry_notes():
    """Registration's own prints to stderr (``Successfully registered model ...``, ``Created
    version ...``) into the log instead, at INFO: step output stays one format."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                log.log(logging.WARNING if "warn" in line.lower() or "error" in line.lower()
                        else logging.INFO, "mlflow: %s", line.strip())


def find_experiment(lakehouse: str, name: str = EXPERIMENT):
    """The experiment, or None when there is none (nothing is created: no store file)."""
    if not os.environ.get("MLFLOW_TRACKING_URI") and \
            not os.path.exists(os.path.join(lakehouse, "mlflow.db")):
        return None
    return client(lakehouse).get_experiment_by_name(name)


# the experiment tag a tuned lakehouse keeps its next training defaults in (JSON)
TUNED_TAG = "lakerec.tuned"


def tuned_settings(lakehouse: str) -> dict[str, str]:
    """The settings the last ``train --tune`` chose, as strings ({} if none; creates nothing)."""
    import json

    exp = find_experiment(lakehouse)
    if exp is None or TUNED_TAG not in exp.tags:
        return {}
    return {k: str(v) for k, v in json.loads(exp.tags[TUNED_TAG]).items() if v is not None}


def remember_tuned(lakehouse: str, settings: dict) -> None:
    import json

    client(lakehouse).set_experiment_tag(experiment_id(lakehouse), TUNED_TAG,
                                         json.dumps(settings, sort_keys=True))


def log_inputs(lakehouse: str, versions: dict[str, int | None], context: str = "training",
               model_id: str | None = None) -> None:
    """Log the input tables of the active run as MLflow datasets: each a Delta source with
    the version read (the run's Inputs, and the logged model's when ``model_id`` is given)."""
    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import LoggedModelInput

    from pipelines.storage.deltalog import table_path

    for table, version in versions.items():
        if version is None:
            continue
        source = DeltaDatasetSource(path=table_path(lakehouse, table),
                                    delta_table_version=int(version))
        ds = MetaDataset(source, name=table, digest=f"v{version}")
        mlflow.log_input(ds, context=context,
                         model=LoggedModelInput(model_id) if model_id else None)


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int
    run_id: str
    params: dict
    metrics: dict


def get_alias(lakehouse: str, alias: str = CHAMPION, name: str = ALS_MODEL) -> ModelRef | None:
    """The model version behind ``alias`` with its run's params and metrics, or ``None``."""
    from mlflow.exceptions import MlflowException

    c = client(lakehouse)
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    run = c.get_run(mv.run_id)
    return ModelRef(name, int(mv.version), mv.run_id, dict(run.data.params),
                    dict(run.data.metrics))


def get_version(lakehouse: str, version: int, name: str = ALS_MODEL) -> ModelRef:
    c = client(lakehouse)
    mv = c.get_model_version(name, str(version))
    run = c.get_run(mv.run_id)
    return ModelRef(name, int(mv.version), mv.run_id, dict(run.data.params),
                    dict(run.data.metrics))


def set_alias(lakehouse: str, version: int, alias: str = CHAMPION, name: str = ALS_MODEL) -> None:
    client(lakehouse).set_registered_model_alias(name, alias, str(version))
    log.info("%s: alias %s -> version %d", name, alias, version)


# --------------------------------------------------------------------------- champion lifecycle
# Every change of the champion is recorded on the version it points to, as tags: when, by what
# (train, promote, rollback), why, and which version it replaced. ``previous`` chains the
# champions: promote pushes (the new champion's previous is the old one), rollback pops (the
# alias goes to the current champion's previous, whose own chain is kept, so a second rollback
# goes one further back).
PROMOTED_AT = "lakerec.promoted_at"
PROMOTED_BY = "lakerec.promoted_by"
PROMOTED_WHY = "lakerec.reason"
PREVIOUS = "lakerec.previous_champion"


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version, as ``lakerec models list`` shows it."""

    version: int
    created: str  # ISO-8601, UTC
    trainer: str
    run_id: str
    metrics: dict
    decision: str
    champion: bool
    promoted_at: str | None
    promoted_by: str | None
    reason: str | None
    previous: int | None


def _iso_ms(ms: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="seconds")


def list_versions(lakehouse: str, name: str = ALS_MODEL) -> list[VersionInfo]:
    """Every version of the model, newest first, with its run's metrics and its champion
    record (creates nothing: no store, no versions). Cost: one registry query and one run
    lookup per version."""
    from mlflow.exceptions import MlflowException

    if find_experiment(lakehouse) is None:
        return []
    c = client(lakehouse)
    try:
        champ = int(c.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        champ = None
    out = []
    for mv in c.search_model_versions(f"name='{name}'"):
        run = c.get_run(mv.run_id)
        tags = mv.tags or {}
        prev = tags.get(PREVIOUS)
        out.append(VersionInfo(
            int(mv.version), _iso_ms(mv.creation_timestamp),
            run.data.params.get("trainer", "als"), mv.run_id, dict(run.data.metrics),
            run.data.tags.get("decision", ""), int(mv.version) == champ,
            tags.get(PROMOTED_AT), tags.get(PROMOTED_BY), tags.get(PROMOTED_WHY),
            int(prev) if prev else None))
    return sorted(out, key=lambda v: -v.version)


def promote(lakehouse: str, version: int, *, reason: str, by: str,
            name: str = ALS_MODEL) -> int | None:
    """Make ``version`` the champion, recording when, why and by what; returns the champion
    it replaced (``None`` if there was none). Promoting the champion again changes nothing.

    Serving follows: ``score`` serves the alias on its next run, a running stream within its
    model refresh interval.
    """
    import datetime as _dt

    from mlflow.exceptions import MlflowException

    c = client(lakehouse)
    try:
        c.get_model_version(name, str(version))
    except MlflowException:
        raise UsageError(f"{name} has no version {version} (`lakerec models list`)") from None
    current = get_alias(lakehouse, name=name)
    if current is not None and current.version == version:
        return version
    v = str(version)
    c.set_model_version_tag(name, v, PROMOTED_AT,
                            _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    c.set_model_version_tag(name, v, PROMOTED_BY, by)
    c.set_model_version_tag(name, v, PROMOTED_WHY, reason)
    if by != "rollback":  # a rollback keeps the target's own chain
        c.set_model_version_tag(name, v, PREVIOUS, str(current.version) if current else "")
    set_alias(lakehouse, version, name=name)
    return current.version if current else None


def rollback(lakehouse: str, *, reason: str, name: str = ALS_MODEL) -> tuple[int, int]:
    """Point the champion back at the one it replaced; returns ``(from, to)``.

    A :class:`UsageError` when there is no champion, or it replaced none.
    """
    current = get_alias(lakehouse, name=name)
    if current is None:
        raise UsageError("no champion to roll back (`lakerec models list`)")
    mv = client(lakehouse).get_model_version(name, str(current.version))
    prev = (mv.tags or {}).get(PREVIOUS)
    if not prev:
        raise UsageError(f"the champion v{current.version} replaced no earlier champion: "
                         "nothing to roll back to (`lakerec models promote VERSION`)")
    promote(lakehouse, int(prev), reason=f"rollback from v{current.version}: {reason}",
            by="rollback", name=name)
    return current.version, int(prev)


# --------------------------------------------------------------------------- the text encoder

ENCODER_MODEL = "lakerec-text-encoder"


def encoder_versions(lakehouse: str) -> list:
    """Every registered version of the text encoder (``ModelVersion`` objects)."""
    return client(lakehouse).search_model_versions(f"name='{ENCODER_MODEL}'")


def register_encoder(lakehouse: str, folder: str, variant: str) -> int:
    """Register ``variant`` of the export in ``folder`` (onnx flavour); returns its version.

    Idempotent: a version whose ``sha256`` tag matches the file is reused, so re-running the
    embed job on the same build registers nothing. The version carries the tokenizer and the
    export's manifest (with its self-check figures) as extra files, and the run logs them as
    params and metrics.
    """
    import json
    import tempfile

    import mlflow

    from pipelines.model import encoder

    manifest = encoder.read_manifest(folder)
    file = encoder.MODEL_FILES[variant]
    sha = manifest["sha256"][file]
    for mv in encoder_versions(lakehouse):
        if mv.tags.get("sha256") == sha:
            return int(mv.version)

    import onnx

    c = client(lakehouse)
    with tempfile.TemporaryDirectory() as tmp:
        # the registered folder's manifest names its one model file and variant
        meta = {**manifest, "variant": variant, "model_file": "model.onnx",
                "source_file": file, "source_sha256": sha}
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(meta, f, indent=2)
        with mlflow.start_run(experiment_id=experiment_id(lakehouse),
                              run_name=f"text-encoder-{variant}") as run:
            mlflow.log_params({"variant": variant, "source": manifest.get("source"),
                               "dim": manifest.get("dim"),
                               "max_length": manifest.get("max_length"),
                               "opset": manifest.get("opset"), "sha256": sha})
            mlflow.log_metrics({k: float(v) for k, v in manifest.get("checks", {}).items()})
            with registry_notes():
                info = mlflow.onnx.log_model(
                    onnx.load(os.path.join(folder, file)), name="encoder",
                    registered_model_name=ENCODER_MODEL, save_as_external_data=False,
                    extra_files=[os.path.join(folder, "tokenizer.json"),
                                 os.path.join(tmp, "manifest.json")],
                    pip_requirements=["onnxruntime", "tokenizers"],
                    metadata={"variant": variant, "sha256": sha})
    version = int(info.registered_model_version)
    c.set_model_version_tag(ENCODER_MODEL, str(version), "sha256", sha)
    c.set_model_version_tag(ENCODER_MODEL, str(version), "variant", variant)
    log.info("%s: registered %s export %s as version %d (run %s)", ENCODER_MODEL, variant,
             sha[:12], version, run.info.run_id)
    return version


def encoder_folder(lakehouse: str, version: int, cache_dir: str) -> str:
    """A local folder holding version ``version``'s ``model.onnx``, ``tokenizer.json`` and
    ``manifest.json`` (downloaded from the registry once, then reused)."""
    import shutil

    import mlflow

    final = os.path.join(cache_dir, f"{ENCODER_MODEL}-v{version}")
    if os.path.exists(os.path.join(final, "manifest.json")):
        return final
    use(lakehouse)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    got = mlflow.artifacts.download_artifacts(f"models:/{ENCODER_MODEL}/{version}", dst_path=tmp)
    for dirpath, _, files in os.walk(got):  # extra files sit in a subfolder: bring them up
        for name in files:
            if name in ("tokenizer.json", "manifest.json") and dirpath != got:
                shutil.move(os.path.join(dirpath, name), os.path.join(got, name))
    if got != tmp:
        for name in os.listdir(got):
            shutil.move(os.path.join(got, name), os.path.join(tmp, name))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
