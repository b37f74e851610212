"""The MLflow model registry, asked by model URI: whether models:/NAME@ALIAS (or
models:/NAME/VERSION) exists, and which version an alias names now. The service asks it to
pick and follow its model; training asks it to register and promote. mlflow is imported only
when asked."""

from __future__ import annotations

from typing import Any


def registry_client(tracking_uri: str) -> Any:
    """An MlflowClient whose registry is the tracking store itself."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registry_has(uri: str, *, tracking_uri: str) -> bool:
    """Whether a models:/NAME@ALIAS or models:/NAME/VERSION URI exists in the registry."""
    from mlflow.exceptions import MlflowException

    if not uri.startswith("models:/"):
        return False
    spec = uri[len("models:/"):]
    client = registry_client(tracking_uri)
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = spec.rpartition("/")
            client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def alias_version(name: str, alias: str, *, tracking_uri: str) -> str:
    """The version a registry alias names now."""
    return str(registry_client(tracking_uri).get_model_version_by_alias(name, alias).version)
