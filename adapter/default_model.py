"""The model the service serves: the configured one, or the default when none is configured.

`models:/radproto@champion` once the registry holds it (a site's own fine-tune, registered
with `radproto train --register radproto --alias champion`), else the model shipped with
radproto (`default`: model/default_model/, trained with `radproto train --preset default`,
loads in seconds on any CPU). The service follows the champion alias from the start, so it
switches to a site's model as soon as one is registered, without a restart.

The CLI hands `load_default_classifier` to the service as its ModelProvider
(radproto/cli.py `_serve`); tests and benchmarks may hand another.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from radproto.adapter.pipeline import log_event

if TYPE_CHECKING:
    from radproto.adapter.pipeline import Classifier
    from radproto.adapter.settings import ServiceSettings

log = logging.getLogger("radproto.service")

DEFAULT_MODEL_NAME = "radproto"
DEFAULT_ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}"


class ModelProvider(Protocol):
    """Loads the model the service serves: (classifier, the URI it came from). `uri` names
    a model (a registry version the service follows); None: the configured or default one."""

    def __call__(self, settings: ServiceSettings, catalog: Any, *,
                 uri: str | None = None) -> tuple[Classifier, str]: ...


def default_model_uri(tracking_uri: str) -> str:
    """The champion's URI if the registry holds it, else the shipped model's ("default")."""
    from radproto.model.registry import registry_has
    from radproto.model.sources import SHIPPED_MODEL

    if tracking_uri and registry_has(DEFAULT_MODEL_URI, tracking_uri=tracking_uri):
        return DEFAULT_MODEL_URI
    return SHIPPED_MODEL


def load_default_classifier(settings: ServiceSettings, catalog: Any, *,
                            uri: str | None = None) -> tuple[Classifier, str]:
    """The configured model (or `uri`), or the default one: models:/radproto@champion if
    the registry holds it, else the model shipped with radproto (adapter/default_model.py)."""
    from radproto.model.sources import load_classifier

    uri = uri or settings.model
    if not uri:
        uri = default_model_uri(settings.tracking_uri)
    classifier = load_classifier(uri, catalog=catalog, tracking_uri=settings.tracking_uri)
    classifier.cuda_batch_tokens = settings.scoring_batch_tokens
    classifier.cuda_layer_major_tokens = settings.layer_major_tokens
    # Readiness waits for this: graph capture and compilation are not the first order's.
    seconds = classifier.prepare_for_serving(compile_kernels=settings.compile_kernels,
                                             marlin_tokens=settings.marlin_tokens,
                                             fp8_burst=settings.fp8_burst)
    if seconds:
        log_event(log, "model_prepared", s=round(seconds, 1),
                  compile_kernels=settings.compile_kernels,
                  marlin_tokens=settings.marlin_tokens, fp8_burst=settings.fp8_burst)
    return classifier, str(uri)


def catalog_differences(classifier: Any) -> dict[str, list[str]]:
    """Configured protocols the model has no trained row for, and model rows the configured
    catalog lacks (empty lists for a model that does not tell)."""
    return {name: sorted(getattr(classifier, name, ()) or ())
            for name in ("untrained_protocols", "dropped_protocols")}


def alias_of(uri: str) -> tuple[str, str] | None:
    """(NAME, ALIAS) of a models:/NAME@ALIAS URI; None for anything else."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].split("@", 1)
        return name, alias
    return None
