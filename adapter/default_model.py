"""The model the service uses when none is configured.

`models:/radproto@champion` once the registry holds it (a site's own fine-tune, registered
with `radproto train --register radproto --alias champion`), else the model shipped with
radproto (`default`: model/default_model/, trained with `radproto train --preset default`,
loads in seconds on any CPU). The service follows the champion alias from the start, so it
switches to a site's model as soon as one is registered, without a restart.
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "radproto"
DEFAULT_ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}"


def default_model_uri(tracking_uri: str) -> str:
    """The champion's URI if the registry holds it, else the shipped model's ("default")."""
    from radproto.model.classifier import SHIPPED_MODEL
    from radproto.model.registry import registry_has

    if tracking_uri and registry_has(DEFAULT_MODEL_URI, tracking_uri=tracking_uri):
        return DEFAULT_MODEL_URI
    return SHIPPED_MODEL
