"""Where a served model comes from: `load_classifier` takes a model URI.

    a directory                  a model directory (radproto_model.json, model/model_dir.py)
    "default"                    the model shipped with radproto (model/default_model/)
    "embedded"                   the base model, head rows from the protocol names, temperature 1
    "models:/NAME@ALIAS"         a registry version (or "models:/NAME/VERSION"), downloaded;
    "runs:/RUN_ID/model"         an MLflow run's model, downloaded

Every directory is read by `ProtocolClassifier.load` (model/classifier.py); a registry
version becomes the classifier's model_version ("NAME/3").
"""

from __future__ import annotations

from pathlib import Path

from radproto.model.catalog import Catalog, default_catalog
from radproto.model.classifier import ProtocolClassifier
from radproto.model.errors import ModelError
from radproto.model.loading import EMBEDDED_BASE_MODEL, ModelConfig, load_base_model
from radproto.model.model_dir import MODEL_FILE
from radproto.model.registry import registry_client

SHIPPED_MODEL = "default"  # the model URI of the shipped default model
SHIPPED_MODEL_DIR = "default_model"  # beside this module (package data)


def shipped_model_dir() -> Path:
    """The default model shipped with radproto (`radproto train --preset default`)."""
    return Path(__file__).resolve().parent / SHIPPED_MODEL_DIR


def load_classifier(uri_or_dir: str | Path | None = "embedded", *,
                    catalog: Catalog | None = None, device: str | None = None,
                    cache_dir: str | Path | None = None,
                    tracking_uri: str | None = None) -> ProtocolClassifier:
    """A classifier from a directory, "models:/NAME@ALIAS", "models:/NAME/VERSION",
    "runs:/RUN_ID/model", "default" (the model shipped with radproto) or "embedded" (the
    base model, its head started from the protocol names, temperature 1)."""
    uri = str(uri_or_dir or "embedded").strip()
    if uri == SHIPPED_MODEL:
        if not (shipped_model_dir() / MODEL_FILE).is_file():
            raise ModelError(f"the shipped default model is missing ({shipped_model_dir()})")
        return ProtocolClassifier.load(shipped_model_dir(), catalog=catalog, device=device,
                                       cache_dir=cache_dir)
    if uri in ("embedded", EMBEDDED_BASE_MODEL):
        config = ModelConfig()
        model, tokenizer = load_base_model(config, device, cache_dir=cache_dir)
        return ProtocolClassifier(model, tokenizer, catalog or default_catalog(),
                                  config=config, model_version="base-smollm2",
                                  metadata={"kind": "base"})
    if uri.startswith(("models:/", "runs:/")):
        directory, registry_version = _download(uri, tracking_uri)
        classifier = ProtocolClassifier.load(directory, catalog=catalog, device=device,
                                             cache_dir=cache_dir)
        if registry_version:
            classifier.model_version = registry_version
        return classifier
    path = Path(uri)
    if not (path / MODEL_FILE).is_file():
        raise ModelError(f"'{uri}' is not a model directory (no {MODEL_FILE}), a models:/ or "
                         "runs:/ URI, or 'embedded'")
    return ProtocolClassifier.load(path, catalog=catalog, device=device, cache_dir=cache_dir)


def _download(uri: str, tracking_uri: str | None) -> tuple[Path, str]:
    """Download an MLflow model directory; returns it with the registry version it names."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as exc:  # pragma: no cover - mlflow is a dependency
        raise ModelError("mlflow is needed to load a models:/ or runs:/ URI") from exc
    registry_version = ""
    try:
        artifact_uri = uri
        if uri.startswith("models:/"):
            registry_version = _registry_version(uri[len("models:/"):], tracking_uri)
            # Resolve through this registry: MLflow's own models:/ lookup would ask the
            # process-wide default registry, not the one named by tracking_uri.
            name, _, version = registry_version.rpartition("/")
            client = registry_client(tracking_uri)
            artifact_uri = client.get_model_version_download_uri(name, version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri,
                                                         tracking_uri=tracking_uri))
    except MlflowException as exc:
        raise ModelError(f"cannot download '{uri}': {exc.message}") from exc
    # A run URI may name the run's root; the model directory is its "model" artifact.
    for candidate in (local, local / "model"):
        if (candidate / MODEL_FILE).is_file():
            return candidate, registry_version
    raise ModelError(f"'{uri}' holds no {MODEL_FILE}")


def _registry_version(spec: str, tracking_uri: str | None) -> str:
    """"name@alias" or "name/3" -> "name/3" (the registry's own version number)."""
    client = registry_client(tracking_uri)
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return f"{name}/{client.get_model_version_by_alias(name, alias).version}"
    name, _, version = spec.rpartition("/")
    if not name or not version.isdigit():
        return ""  # e.g. a stage name: no stable number to report
    return f"{name}/{version}"
