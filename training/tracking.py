"""MLflow tracking for training and evaluation runs, and the model registry.

Default: a SQLite tracking store and registry in the working directory (`sqlite:///mlflow.db`,
artifacts in ./mlartifacts); any tracking server by URI. An empty URI turns tracking off
(every method is then a no-op), which DDP ranks other than 0 use too.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from radproto.model.errors import ModelError
from radproto.model.registry import registry_client
from radproto.model.registry import registry_has as registry_has  # re-exported

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_ARTIFACT = "model"
_PARAM_MAX = 500


# One registry client for training and the service (model/registry.py).
_client = registry_client


def _artifact_location(tracking_uri: str) -> str | None:
    """./mlartifacts next to a local SQLite store (what `mlflow server` uses by default)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


class Tracker:
    """One MLflow run; a no-op when tracking_uri is empty."""

    def __init__(self, tracking_uri: str, experiment: str = "radproto", *,
                 run_id: str | None = None, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        self.enabled = bool(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id or ""
        if not self.enabled:
            return
        client = _client(tracking_uri)
        self.client = client
        found = client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = client.create_experiment(
                experiment, artifact_location=_artifact_location(tracking_uri))
        else:
            experiment_id = found.experiment_id
        if run_id:
            run = client.get_run(run_id)
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
            self.run_id = run.info.run_id

    # -- logging -------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param_text(v)) for k, v in sorted(params.items())
                 if k not in existing]  # a resumed run keeps its original parameters
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()
                 if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, name)

    def log_dict(self, data: Any, name: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_model(self, model_dir: str | Path) -> str:
        """Log the model directory as the run's pyfunc model; returns its runs:/ URI."""
        if not self.enabled:
            return ""
        from radproto.training.pyfunc import save_pyfunc

        with tempfile.TemporaryDirectory(prefix="radproto-pyfunc-") as scratch:
            target = save_pyfunc(model_dir, Path(scratch) / MODEL_ARTIFACT)
            self.client.log_artifacts(self.run_id, str(target), MODEL_ARTIFACT)
        return f"runs:/{self.run_id}/{MODEL_ARTIFACT}"

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status=status)


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
    return text if len(text) <= _PARAM_MAX else text[:_PARAM_MAX - 3] + "..."


# ---------------------------------------------------------------------------- registry
def register_model(model_uri: str, name: str, *, tracking_uri: str, alias: str = "",
                   run_id: str = "") -> str:
    """Register `model_uri` (runs:/...) as a new version of `name`; set `alias` on it.

    Returns the registry URI ("models:/name@alias" or "models:/name/version").
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        source = model_uri
        if model_uri.startswith("runs:/"):
            run = client.get_run(run_id or model_uri.split("/")[1])
            source = f"{run.info.artifact_uri.rstrip('/')}/{model_uri.split('/', 2)[2]}"
        version = client.create_model_version(name, source, run_id=run_id or None)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise ModelError(f"cannot register '{model_uri}' as '{name}': {exc.message}") from exc
    log.info("registered %s version %s%s", name, version.version,
             f" as @{alias}" if alias else "")
    return f"models:/{name}@{alias}" if alias else f"models:/{name}/{version.version}"


def set_alias(name: str, alias: str, version: str | int, *, tracking_uri: str) -> None:
    _client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def log_evaluation(tracking_uri: str, out_dir: str | Path, metrics: Mapping[str, Any], *,
                   model_uri: str, data: str, experiment: str = "radproto") -> str:
    """An evaluation run holding metrics.json, report.md and the pictures; returns its id."""
    tracker = Tracker(tracking_uri, experiment, run_name="eval",
                      tags={"radproto.kind": "evaluation"})
    tracker.log_params({"model": model_uri, "data": data})
    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    tracker.log_artifacts(out_dir, "evaluation")
    tracker.end()
    return tracker.run_id


def load_model(uri: str, *, catalog: Any = None, tracking_uri: str | None = None) -> Any:
    """load_classifier for a directory or a models:/ / runs:/ URI on this tracking server.

    A models:/ URI is resolved here through a client bound to `tracking_uri` as registry
    (mlflow's module-level download would ask its default registry instead), without
    touching mlflow's global tracking or registry URI.
    """
    from mlflow.exceptions import MlflowException

    from radproto.model.classifier import ProtocolClassifier
    from radproto.model.sources import load_classifier

    if not (tracking_uri and uri.startswith("models:/")):
        return load_classifier(uri, catalog=catalog, tracking_uri=tracking_uri)
    import mlflow.artifacts

    spec = uri[len("models:/"):]
    client = _client(tracking_uri)
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = spec.rpartition("/")
            version = client.get_model_version(name, number)
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source,
                                                    tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise ModelError(f"cannot load '{uri}' from {tracking_uri}: {exc.message}") from exc
    classifier = ProtocolClassifier.load(local, catalog=catalog)
    classifier.model_version = f"{name}/{version.version}"
    return classifier
