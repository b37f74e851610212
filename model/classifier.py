"""The protocol classifier: a causal LM that scores every catalog protocol for an order.

The public entry point of the model. Loading lives in loading.py, the shared tokenization in
encoding.py, the one-pass catalog scoring in scoring.py and temperature scaling in
calibration.py; this module ties them together and saves/loads model directories.

A model directory holds `radproto_model.json` (base model reference, ModelConfig, the
catalog it was trained on, prompt version, temperature, abstain threshold, training
metadata), the tokenizer, and either a LoRA adapter (kind "adapter"), a full merged model
(kind "merged") or nothing (kind "base": the base model as is).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.bounded_scoring import BoundedScorer
from radproto.model.calibration import abstain_reason, catalog_probabilities, fit_temperature
from radproto.model.catalog import Catalog, default_catalog
from radproto.model.encoding import (
    IGNORE_INDEX,
    TARGET_RESERVE,
    encode_example,
    prompt_token_ids,
    target_token_ids,
)
from radproto.model.errors import ModelError
from radproto.model.fast_scoring import FastScorer, GraphedScorer
from radproto.model.fast_train import cast_frozen_floats, compile_elementwise, lean_lora
from radproto.model.loading import (
    DEFAULT_LORA_TARGETS,
    EMBEDDED_BASE_MODEL,
    ModelConfig,
    add_lora,
    embedded_model_dir,
    ensure_pad_token,
    load_base_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from radproto.model.order import Order
from radproto.model.prompt import PROMPT_VERSION
from radproto.model.scoring import ProtocolTrie, trie_log_probs
from radproto.model.suggestion import ProtocolScore, Suggestion

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "EMBEDDED_BASE_MODEL",
    "IGNORE_INDEX",
    "MODEL_FILE",
    "TARGET_RESERVE",
    "ModelConfig",
    "ProtocolClassifier",
    "add_lora",
    "catalog_probabilities",
    "embedded_model_dir",
    "encode_example",
    "ensure_pad_token",
    "fit_temperature",
    "load_base_model",
    "load_classifier",
    "prompt_token_ids",
    "target_token_ids",
]

log = logging.getLogger(__name__)

MODEL_FILE = "radproto_model.json"
FORMAT_VERSION = 1
DEFAULT_ABSTAIN_THRESHOLD = 0.5
_CUDA_BATCH_TOKENS = 4096


class ProtocolClassifier:
    """Scores every catalog protocol for an order and picks one, or abstains."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        catalog: Catalog,
        *,
        config: ModelConfig | None = None,
        temperature: float = 1.0,
        abstain_threshold: float = DEFAULT_ABSTAIN_THRESHOLD,
        model_version: str = "",
        metadata: Mapping[str, Any] | None = None,
        trained_catalog: Catalog | None = None,
        scoring_tolerance: float = 0.0,
        cuda_graphs: bool = True,
    ) -> None:
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise ModelError("the tokenizer's pad token must exist and differ from EOS")
        if temperature <= 0:
            raise ModelError(f"temperature must be positive, not {temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or ModelConfig()
        self.temperature = float(temperature)
        self.abstain_threshold = float(abstain_threshold)
        self.scoring_tolerance = scoring_tolerance
        self.model_version = model_version or "m-unsaved"
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.trained_catalog = trained_catalog or catalog
        self._tries: dict[str, ProtocolTrie] = {}
        # CUDA only: one order at a time through captured graphs (latency); the scorers are
        # kept per catalog version so their device plans and graphs are built once.
        self.cuda_graphs = cuda_graphs
        # CUDA: tokens per batched pass (prompts plus each order's prefix tree). Measured on a
        # 7B NF4 model: 4096 -> 4.99 GB peak, 45 orders/s; 8192 -> 5.39 GB, 65 orders/s
        self.cuda_batch_tokens = _CUDA_BATCH_TOKENS
        self._cuda_scorers: dict[tuple[str, str], Any] = {}
        self.catalog = catalog

    @property
    def scoring_tolerance(self) -> float:
        """0: the exact distribution; > 0: bounded_scoring's certified tolerance."""
        return self._scoring_tolerance

    @scoring_tolerance.setter
    def scoring_tolerance(self, value: float) -> None:
        if not 0 <= value < 1:
            raise ModelError(f"the scoring tolerance must be in [0, 1), not {value}")
        self._scoring_tolerance = float(value)

    # -- catalog ---------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        # A protocol added after training is scored too: its name is simply tokenized.
        if len(catalog) == 0:
            raise ModelError("the catalog holds no protocols")
        self._catalog = catalog

    def _trie(self) -> ProtocolTrie:
        trie = self._tries.get(self._catalog.version)
        if trie is None:
            sequences = [target_token_ids(self.tokenizer, n) for n in self._catalog.names]
            trie = self._tries[self._catalog.version] = ProtocolTrie.build(sequences)
        return trie

    # -- scoring ---------------------------------------------------------------------------
    def catalog_log_probs(self, fields_list: Sequence[Mapping[str, Any]], *,
                          batch_size: int = 16) -> np.ndarray:
        """[n, n_protocols] log p(" " + name + EOS | prompt), unnormalized, catalog order.

        Exact unless `scoring_tolerance` > 0 (then within that tolerance once calibrated
        with this classifier's temperature; see bounded_scoring.py). On CUDA the exact
        distribution comes from fast_scoring's batched path.
        """
        import torch

        if batch_size < 1:
            raise ModelError("batch_size must be at least 1")
        trie = self._trie()
        prompts = [prompt_token_ids(self.tokenizer, f, self.config.max_length)
                   for f in fields_list]
        if self.scoring_tolerance > 0:
            scorer = BoundedScorer(self.model, trie, self.tokenizer.pad_token_id,
                                   tolerance=self.scoring_tolerance, max_batch=batch_size)
            with _eval_mode(self.model):
                return scorer.log_probs(prompts, temperature=self.temperature)
        if _on_cuda(self.model):
            with _eval_mode(self.model):
                return self._cuda_log_probs(trie, prompts)
        out = np.empty((len(prompts), len(self._catalog)), dtype=np.float64)
        # Similar lengths share a batch: less padding to compute.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        with _eval_mode(self.model), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                out[chunk] = trie_log_probs(
                    self.model, [prompts[i] for i in chunk], trie,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
        return out

    def _cuda_log_probs(self, trie: ProtocolTrie, prompts: list[list[int]]) -> np.ndarray:
        """fast_scoring on the GPU: a captured graph for a lone order, batches otherwise."""
        if self.cuda_graphs and len(prompts) == 1:
            graphed = self._graphed_scorer(trie)
            if len(prompts[0]) <= graphed.max_prompt:
                return graphed.log_probs_one(prompts[0])[None]
        version = self._catalog.version
        batched = self._cuda_scorers.get((version, "batched"))
        if batched is None:
            batched = self._cuda_scorers[version, "batched"] = FastScorer(
                self.model, trie, self.tokenizer.pad_token_id)
        batched.max_batch_tokens = self.cuda_batch_tokens
        return batched.log_probs(prompts)

    def _graphed_scorer(self, trie: ProtocolTrie) -> GraphedScorer:
        key = (self._catalog.version, "graphed")
        if key not in self._cuda_scorers:
            self._cuda_scorers[key] = GraphedScorer(self.model, trie,
                                                    self.tokenizer.pad_token_id,
                                                    max_prompt=self.config.max_length)
        return self._cuda_scorers[key]

    def prepare_for_serving(self, *, compile_kernels: bool = False) -> float:
        """On CUDA, pay the first order's costs now: optionally compile the elementwise
        kernels (RMSNorm, SwiGLU, RoPE), capture the single-order graph of every
        prompt-length bucket and run one batch. Returns the seconds spent (0 elsewhere)."""
        import time

        if not _on_cuda(self.model):
            return 0.0
        start = time.perf_counter()
        if compile_kernels:
            compile_elementwise(self.model)
        trie = self._trie()
        filler = self.tokenizer.eos_token_id
        with _eval_mode(self.model):
            if self.cuda_graphs:
                graphed = self._graphed_scorer(trie)
                for width in graphed.widths():
                    graphed.log_probs_one([filler] * width)
            self._cuda_log_probs(trie, [[filler] * 64] * 8)
        return time.perf_counter() - start

    def probabilities(self, log_probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities over the catalog for catalog_log_probs' output."""
        return catalog_probabilities(log_probs, self.temperature)

    def score_orders(self, orders: Sequence[Order | Mapping[str, Any]], *,
                     batch_size: int = 16) -> list[Suggestion]:
        """A suggestion per order: every protocol's probability, the choice, abstention."""
        fields_list = [_fields(o) for o in orders]
        if not fields_list:
            return []
        probs = self.probabilities(self.catalog_log_probs(fields_list, batch_size=batch_size))
        names = self._catalog.names
        suggestions = []
        for order, row in zip(orders, probs, strict=True):
            ranked = np.argsort(-row, kind="stable")
            scores = tuple(ProtocolScore(protocol=names[i], probability=float(row[i]))
                           for i in ranked)
            confidence = scores[0].probability
            reason = abstain_reason(confidence, self.abstain_threshold)
            suggestions.append(Suggestion(
                scores=scores,
                protocol=scores[0].protocol,
                confidence=confidence,
                abstained=bool(reason),
                abstain_reason=reason,
                model_version=self.model_version,
                catalog_version=self._catalog.version,
                prompt_version=PROMPT_VERSION,
                raw_message_id=_raw_message_id(order),
            ))
        return suggestions

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, *, metadata: Mapping[str, Any] | None = None,
             merged: bool = False) -> Path:
        """Write the model directory; returns it. `merged` writes full merged weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        is_peft = hasattr(self.model, "peft_config")
        if is_peft and not merged:
            kind = "adapter"
            self.model.save_pretrained(directory)
        elif is_peft or merged or self.metadata.get("kind") != "base":
            # Weights that are not the untouched base are always written in full.
            kind = "merged"
            full = copy.deepcopy(self.model)
            if is_peft:
                full = full.merge_and_unload()
            full.save_pretrained(directory, safe_serialization=True)
        else:
            kind = "base"  # the base model as is: nothing but the reference to write
        self.tokenizer.save_pretrained(directory)
        if metadata:
            self.metadata.update(metadata)
        self.metadata["kind"] = kind
        record = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "base_model": self.config.base_model,
            "model_config": self.config.to_dict(),
            "catalog": json.loads(self.trained_catalog.to_json()),
            "catalog_version": self.trained_catalog.version,
            "prompt_version": PROMPT_VERSION,
            "temperature": self.temperature,
            "abstain_threshold": self.abstain_threshold,
            "metadata": {k: v for k, v in self.metadata.items() if k != "kind"},
        }
        (directory / MODEL_FILE).write_text(json.dumps(record, indent=2, default=str), "utf-8")
        self.model_version = _model_version(directory, record)
        return directory

    @classmethod
    def load(cls, directory_or_uri: str | Path, *, catalog: Catalog | None = None,
             device: str | None = None,
             cache_dir: str | Path | None = None) -> ProtocolClassifier:
        """A classifier from a model directory (or any URI load_classifier accepts)."""
        path = Path(directory_or_uri)
        if not (path / MODEL_FILE).is_file():
            return load_classifier(str(directory_or_uri), catalog=catalog, device=device,
                                   cache_dir=cache_dir)
        try:
            record = json.loads((path / MODEL_FILE).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path / MODEL_FILE}: cannot read: {exc}") from exc
        if record.get("prompt_version") != PROMPT_VERSION:
            raise ModelError(f"{path}: trained with prompt {record.get('prompt_version')}, "
                             f"this build renders prompt {PROMPT_VERSION}")
        config = ModelConfig.from_dict(record.get("model_config") or {})
        kind = record.get("kind", "adapter")
        device = resolve_device(device)
        if kind == "merged":
            model, _ = load_base_model(config, device, cache_dir=cache_dir, source=path)
        else:
            model, _ = load_base_model(config, device, cache_dir=cache_dir)
            if kind == "adapter":
                from peft import PeftModel

                try:
                    model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
                except (OSError, ValueError) as exc:
                    raise ModelError(f"{path}: cannot load the adapter: {exc}") from exc
            elif kind != "base":
                raise ModelError(f"{path}: unknown model kind '{kind}'")
        model.eval()
        if device.startswith("cuda"):
            # Serving only (nothing trains here): the adapter stored in the compute dtype
            # (half its memory, no cast per call), its add fused into the GEMM.
            cast_frozen_floats(model, resolve_dtype(config, device))
            lean_lora(model)
        tokenizer = load_tokenizer(path)
        ensure_pad_token(tokenizer)
        trained = Catalog.from_json(json.dumps(record["catalog"]), source=str(path))
        metadata = dict(record.get("metadata") or {})
        metadata["kind"] = kind
        return cls(
            model, tokenizer, catalog or trained,
            config=config,
            temperature=float(record.get("temperature", 1.0)),
            abstain_threshold=float(record.get("abstain_threshold", DEFAULT_ABSTAIN_THRESHOLD)),
            model_version=_model_version(path, record),
            metadata=metadata,
            trained_catalog=trained,
        )


def load_classifier(uri_or_dir: str | Path | None = "embedded", *,
                    catalog: Catalog | None = None, device: str | None = None,
                    cache_dir: str | Path | None = None,
                    tracking_uri: str | None = None) -> ProtocolClassifier:
    """A classifier from a directory, "models:/NAME@ALIAS", "models:/NAME/VERSION",
    "runs:/RUN_ID/model", or "embedded" (the base model, no adapter, temperature 1)."""
    uri = str(uri_or_dir or "embedded").strip()
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
            from mlflow import MlflowClient

            name, _, version = registry_version.rpartition("/")
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
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
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return f"{name}/{client.get_model_version_by_alias(name, alias).version}"
    name, _, version = spec.rpartition("/")
    if not name or not version.isdigit():
        return ""  # e.g. a stage name: no stable number to report
    return f"{name}/{version}"


def _model_version(directory: Path, record: Mapping[str, Any]) -> str:
    """The registry version named in the metadata, else "m-" + hash(weights + config)."""
    named = (record.get("metadata") or {}).get("model_version")
    if named:
        return str(named)
    digest = hashlib.sha256()
    for weights in _weight_files(directory):
        with weights.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    identity = {k: record.get(k) for k in ("kind", "base_model", "model_config",
                                            "catalog_version", "prompt_version",
                                            "temperature", "abstain_threshold")}
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return "m-" + digest.hexdigest()[:12]


def _weight_files(directory: Path) -> list[Path]:
    """The adapter or (possibly sharded) model weight files of a model directory."""
    patterns = ("adapter_model.safetensors", "adapter_model.bin", "model*.safetensors",
                "pytorch_model*.bin")
    found = {p for pattern in patterns for p in directory.glob(pattern) if p.is_file()}
    return sorted(found)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while scoring; a model in training goes back to training afterwards."""
    was_training = bool(getattr(model, "training", False))
    if was_training:  # eval() walks every module: thousands on a 7B, ms per order
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _on_cuda(model: Any) -> bool:
    try:
        return next(model.parameters()).is_cuda
    except (StopIteration, AttributeError):
        return False


def _fields(order: Order | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(order, Order):
        return order.prompt_fields()
    if isinstance(order, Mapping):
        return order  # a row of the order file format: the same keys the prompt reads
    raise ModelError(f"cannot score a {type(order).__name__}; pass an Order or a dict")


def _raw_message_id(order: Order | Mapping[str, Any]) -> str:
    if isinstance(order, Order):
        return order.raw_message_id
    return str(order.get("raw_message_id") or "")
