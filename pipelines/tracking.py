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
