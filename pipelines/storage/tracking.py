"""MLflow: the tracking store, training runs, the model registry and the ``champion`` alias.

``MLFLOW_TRACKING_URI`` wins when set; otherwise a SQLite store in the lakehouse
(``sqlite:///<lakehouse>/mlflow.db``) with artifacts under ``<lakehouse>/mlartifacts``.
mlflow is imported inside the functions: importing it costs about 1.5 s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

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


def client(lakehouse: str):
    """An ``MlflowClient`` on the lakehouse's store (also set as mlflow's current store)."""
    import mlflow

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
