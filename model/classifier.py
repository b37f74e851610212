"""The protocol classifier: a causal LM with a protocol head scores every catalog protocol.

The model's core type. Loading the base lives in loading.py, the tokenization in
encoding.py, the head in head.py, the one-pass scoring in scoring.py (CPU) and
cuda_scoring.py (GPU), temperature scaling in calibration.py; this module ties them together
and saves/loads model directories (the record: model_dir.py). A model by URI ("default",
"embedded", models:/, runs:/): `load_classifier` in sources.py, built on
`ProtocolClassifier.load`.

A model directory holds `radproto_model.json` (base model reference, ModelConfig, the
catalog whose protocols the head has rows for, prompt version, temperature, abstain
threshold, lexical weight, training metadata), the tokenizer, the head
(`protocol_head.safetensors`), optionally the lexical model blended with the head
(`lexical.safetensors` + `lexical.json`, model/lexical.py) and either a LoRA adapter (kind
"adapter"), a full merged model (kind "merged") or nothing (kind "base": the base model as is).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.calibration import (
    abstain_reason,
    blend_log_probs,
    catalog_probabilities,
    fit_temperature,
)
from radproto.model.catalog import Catalog
from radproto.model.cuda_scoring import BatchedScorer, GraphedScorer
from radproto.model.encoding import batch_prompt_token_ids, prompt_token_ids
from radproto.model.errors import ModelError
from radproto.model.head import (
    head_for_catalog,
    load_head,
    new_head,
    offload_output_embeddings,
    save_head,
)
from radproto.model.kernels import (
    cast_frozen_floats,
    compile_elementwise,
    fold_lora,
    lean_lora,
)
from radproto.model.lexical import LexicalModel, load_lexical
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
    serving_dtype,
)
from radproto.model.model_dir import FORMAT_VERSION, MODEL_FILE, model_version, read_record
from radproto.model.order import Order
from radproto.model.prompt import PROMPT_VERSION
from radproto.model.scoring import head_log_probs, mask_capable_attention
from radproto.model.suggestion import Suggestion, ranked_scores

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "EMBEDDED_BASE_MODEL",
    "MODEL_FILE",
    "ModelConfig",
    "ProtocolClassifier",
    "add_lora",
    "catalog_probabilities",
    "embedded_model_dir",
    "ensure_pad_token",
    "fit_temperature",
    "load_base_model",
    "prompt_token_ids",
]

log = logging.getLogger(__name__)

DEFAULT_ABSTAIN_THRESHOLD = 0.5  # a model saved without a threshold derived from validation
#: CUDA: prompt tokens per batched pass (padding included).
_CUDA_BATCH_TOKENS = 32768


class ProtocolClassifier:
    """Scores every catalog protocol for an order and picks one, or abstains."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        catalog: Catalog,
        *,
        head: Any | None = None,
        config: ModelConfig | None = None,
        temperature: float = 1.0,
        abstain_threshold: float = DEFAULT_ABSTAIN_THRESHOLD,
        model_version: str = "",
        metadata: Mapping[str, Any] | None = None,
        untrained: Sequence[str] = (),
        cuda_graphs: bool = True,
        lexical: LexicalModel | None = None,
        lexical_weight: float = 0.0,
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
        self.model_version = model_version or "m-unsaved"
        self.metadata: dict[str, Any] = dict(metadata or {})
        # Rows started from a protocol's name and never trained (a site's new protocols).
        self.untrained_protocols: tuple[str, ...] = tuple(untrained)
        self.dropped_protocols: tuple[str, ...] = ()
        self.head = head if head is not None else new_head(model, tokenizer, catalog.names)
        # The bag of words blended with the head: log_softmax(head + weight * lexical).
        self.lexical = lexical
        self.lexical_weight = float(lexical_weight)
        # CUDA only: one order at a time through captured graphs (latency); the scorers are
        # rebuilt when the catalog (and so the head) changes.
        self.cuda_graphs = cuda_graphs
        self.cuda_batch_tokens = _CUDA_BATCH_TOKENS
        # CUDA, LoRA fold: batches of a burst run layer by layer in waves of up to this many
        # tokens, each layer's folded weights built once a wave (0: off; cuda_scoring.py)
        self.cuda_layer_major_tokens = 0
        self.graph_bucket = 32  # prompt tokens per CUDA-graph bucket of the lone order
        self._cuda_scorers: dict[str, Any] = {}
        self.catalog = catalog

    # -- catalog ---------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        if len(catalog) == 0:
            raise ModelError("the catalog holds no protocols")
        head, added, dropped = head_for_catalog(self.head, catalog.names, self.model,
                                                self.tokenizer)
        if added:
            log.warning("the catalog has %d protocols the model was not trained on; their "
                        "head rows start from their names and want fine-tuning on the "
                        "site's history: %s", len(added), ", ".join(added))
        if dropped:
            log.info("the catalog drops %d protocols the model has rows for: %s",
                     len(dropped), ", ".join(dropped))
        kept_untrained = [n for n in self.untrained_protocols if n in catalog.names]
        self.untrained_protocols = tuple(dict.fromkeys([*kept_untrained, *added]))
        self.dropped_protocols = tuple(dict.fromkeys([*self.dropped_protocols, *dropped]))
        self.head = head
        if self.lexical is not None:
            self.lexical = self.lexical.for_catalog(catalog.names)
        self._cuda_scorers.clear()
        self._catalog = catalog

    # -- scoring ---------------------------------------------------------------------------
    def catalog_log_probs(self, fields_list: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """[n, n_protocols] log-probabilities over the catalog (before the temperature), in
        catalog order: the head's, blended with the lexical model's when the model has one."""
        return self.blend(self.head_log_probs(fields_list), fields_list)

    @property
    def blended(self) -> bool:
        """Whether scores blend the head with the lexical model."""
        return self.lexical is not None and self.lexical_weight != 0

    def blend(self, from_head: np.ndarray, fields_list: Sequence[Mapping[str, Any]],
              lexical: np.ndarray | None = None) -> np.ndarray:
        """log_softmax(head + weight * lexical), or the head's own when there is no blend.
        `lexical`: the lexical model's log-probabilities for fields_list, if scored already."""
        if not self.blended or not len(from_head):
            return from_head
        if lexical is None:
            lexical = self.lexical.log_probs(fields_list)
        return blend_log_probs(from_head, lexical, self.lexical_weight)

    def head_log_probs(self, fields_list: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """[n, n_protocols] the protocol head's log-probabilities alone: one forward pass
        per batch of prompts, the head on the last token."""
        prompts = batch_prompt_token_ids(self.tokenizer, fields_list, self.config.max_length)
        with _eval_mode(self.model), mask_capable_attention(self.model):
            if _on_cuda(self.model):
                return self._cuda_log_probs(prompts)
            return head_log_probs(self.model, self.head, prompts,
                                  pad_token_id=self.tokenizer.pad_token_id)

    def _cuda_log_probs(self, prompts: list[list[int]]) -> np.ndarray:
        """A captured graph for a lone order, token-budget batches otherwise."""
        if self.cuda_graphs and len(prompts) == 1:
            graphed = self._graphed_scorer()
            if len(prompts[0]) <= graphed.max_prompt:
                return graphed.log_probs_one(prompts[0])[None]
        batched = self._cuda_scorers.get("batched")
        if batched is None:
            batched = self._cuda_scorers["batched"] = BatchedScorer(
                self.model, self.head, self.tokenizer.pad_token_id)
        batched.max_batch_tokens = self.cuda_batch_tokens
        batched.layer_major_tokens = self.cuda_layer_major_tokens
        return batched.log_probs(prompts)

    def _graphed_scorer(self) -> GraphedScorer:
        if "graphed" not in self._cuda_scorers:
            self._cuda_scorers["graphed"] = GraphedScorer(
                self.model, self.head, self.tokenizer.pad_token_id, bucket=self.graph_bucket,
                max_prompt=self.config.max_length)
        return self._cuda_scorers["graphed"]

    def prepare_for_serving(self, *, compile_kernels: bool = False,
                            fold_lora_tokens: int = 1024, marlin_tokens: int = 0,
                            fp8_burst: bool = False) -> float:
        """On CUDA, pay the first order's costs now: optionally compile the elementwise
        kernels (RMSNorm, SwiGLU, RoPE), capture the single-order graph of every
        prompt-length bucket and run one batch. `fold_lora_tokens`: batches of at least this
        many tokens add the LoRA delta to the dequantised 4-bit weights (kernels.fold_lora;
        0: off; +10% decoder throughput on an H200, bench/GPU_NOTES.md run 12).
        `marlin_tokens`: calls of at most this many tokens (the lone order's graphs) run an
        int4 copy of the folded weights through the Marlin GEMM (model/marlin.py; 0: off;
        a second copy of the weights, 3.3 GB on a 7B). `fp8_burst`: the folded calls run
        their GEMMs in FP8 (model/fp8.py; a card with FP8 tensor cores; no extra memory).
        On every device, the objects built so far (the loaded model's ~650k on a 7B) then
        leave the garbage collector's full passes (`freeze_loaded_objects`).
        Returns the seconds spent (0 elsewhere)."""
        import time

        if not _on_cuda(self.model):
            freeze_loaded_objects()
            return 0.0
        start = time.perf_counter()
        offload_output_embeddings(self.model)  # the head reads hidden states: 0.4 GB on a 7B
        if compile_kernels:
            compile_elementwise(self.model)
        fold_lora(self.model, fold_lora_tokens)
        if fp8_burst:
            self._attach_fp8(fold_lora_tokens)
        if marlin_tokens:
            from radproto.model.marlin import marlin_lora

            cost = marlin_lora(self.model, marlin_tokens)
            log.info("Marlin int4 for calls of <= %d tokens: %d layers, %.2f GB, built in "
                     "%.0f s", marlin_tokens, cost["layers"], cost["gb"], cost["build_s"])
            # Marlin's time grows with the tokens (~8 ms at 64, ~13 at 96 on an H100): pad a
            # lone order by at most 15 tokens. bitsandbytes' path times the same with 32-token
            # buckets and holds 0.3 GB less in graphs (bench/GPU_NOTES.md run 22).
            self.graph_bucket = 16
            self._cuda_scorers.pop("graphed", None)
        filler = self.tokenizer.eos_token_id
        with _eval_mode(self.model), mask_capable_attention(self.model):
            if self.cuda_graphs:
                graphed = self._graphed_scorer()
                for width in graphed.widths():
                    graphed.log_probs_one([filler] * width)
            self._cuda_log_probs([[filler] * 64] * 8)
            if fp8_burst and fold_lora_tokens:  # compile the FP8 casts now, not at a burst
                self._cuda_log_probs([[filler] * 64] * (fold_lora_tokens // 64 + 1))
            if self.cuda_layer_major_tokens and fold_lora_tokens:  # a two-batch wave
                rows = min(self.cuda_layer_major_tokens, 2 * self.cuda_batch_tokens) // 64
                self._cuda_log_probs([[filler] * 64] * rows)
        freeze_loaded_objects()
        return time.perf_counter() - start

    def _attach_fp8(self, fold_lora_tokens: int) -> None:
        from radproto.model.fp8 import fp8_burst, fp8_supported

        if not fp8_supported():
            log.warning("fp8_burst is set but this card has no FP8 tensor cores: bursts stay "
                        "in bf16")
        elif not fold_lora_tokens:
            log.warning("fp8_burst rides on the LoRA fold, which is off (fold_lora_tokens=0): "
                        "bursts stay in bf16")
        else:
            layers = fp8_burst(self.model)
            log.info("FP8 GEMMs for calls of >= %d tokens: %d layers", fold_lora_tokens,
                     layers)

    def merge_for_cpu(self) -> None:
        """Score on a CPU as the service does: the adapter merged into the base weights and
        the base in its serving dtype (bf16 where the CPU has native bf16, unless the
        model's compute_dtype says otherwise). Nothing may train the model afterwards."""
        if not _on_cuda(self.model):
            _prepare_for_cpu(self.model, serving_dtype(self.config, "cpu"))

    def probabilities(self, log_probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities over the catalog for catalog_log_probs' output."""
        return catalog_probabilities(log_probs, self.temperature)

    def score_orders(self, orders: Sequence[Order | Mapping[str, Any]]) -> list[Suggestion]:
        """A suggestion per order: every protocol's probability, the choice, abstention."""
        fields_list = [_fields(o) for o in orders]
        if not fields_list:
            return []
        return self.suggestions(orders, self.probabilities(self.catalog_log_probs(fields_list)))

    def suggestions(self, orders: Sequence[Order | Mapping[str, Any]],
                    probs: np.ndarray) -> list[Suggestion]:
        """A Suggestion per order from its calibrated probabilities (`probabilities`), on the
        host: ranking, the choice, abstention (split out so benchmarks time it alone)."""
        names = self._catalog.names
        suggestions = []
        for order, row in zip(orders, probs, strict=True):
            scores = ranked_scores(names, row)
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
        save_head(self.head, directory)
        if self.lexical is not None:
            self.lexical.save(directory)
        if metadata:
            self.metadata.update(metadata)
        self.metadata["kind"] = kind
        record = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "base_model": self.config.base_model,
            "model_config": self.config.to_dict(),
            # the head's rows, keyed by name: one per protocol of this catalog
            "catalog": json.loads(self._catalog.to_json()),
            "catalog_version": self._catalog.version,
            "untrained_protocols": list(self.untrained_protocols),
            "prompt_version": PROMPT_VERSION,
            "temperature": self.temperature,
            "abstain_threshold": self.abstain_threshold,
            "lexical_weight": self.lexical_weight if self.lexical is not None else 0.0,
            "metadata": {k: v for k, v in self.metadata.items() if k != "kind"},
        }
        (directory / MODEL_FILE).write_text(json.dumps(record, indent=2, default=str), "utf-8")
        self.model_version = model_version(directory, record)
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, catalog: Catalog | None = None,
             device: str | None = None,
             cache_dir: str | Path | None = None) -> ProtocolClassifier:
        """A classifier from a model directory (model/sources.py `load_classifier` takes a
        URI: "default", "embedded", models:/, runs:/ or a directory)."""
        path = Path(directory)
        record = read_record(path)
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
        head = load_head(path, trained.names, device=device)
        metadata = dict(record.get("metadata") or {})
        metadata["kind"] = kind
        classifier = cls(
            model, tokenizer, trained, head=head,
            config=config,
            temperature=float(record.get("temperature", 1.0)),
            abstain_threshold=float(record.get("abstain_threshold", DEFAULT_ABSTAIN_THRESHOLD)),
            model_version=model_version(path, record),
            metadata=metadata,
            untrained=record.get("untrained_protocols") or (),
            lexical=load_lexical(path),
            lexical_weight=float(record.get("lexical_weight", 0.0)),
        )
        classifier.merge_for_cpu()
        if catalog is not None:
            classifier.catalog = catalog  # re-keys the head: new rows from names, drops
        return classifier


def _prepare_for_cpu(model: Any, dtype: Any) -> None:
    """Serving on a CPU: the adapter merged into the base weights (no LoRA products per
    call) and the base weights in `dtype`. The LoRA weights themselves stay as trained, so
    saving the loaded model (radproto calibrate) writes the same adapter."""
    if hasattr(model, "merge_adapter"):
        model.merge_adapter()
    for name, param in model.named_parameters():
        if "lora_" not in name and param.dtype != dtype and param.is_floating_point():
            param.data = param.data.to(dtype)
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and "rotary" not in name and buffer.dtype != dtype:
            buffer.data = buffer.data.to(dtype)


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


def freeze_loaded_objects() -> None:
    """Move every object alive now into the garbage collector's permanent generation.

    A loaded model is hundreds of thousands of long-lived Python objects (modules,
    parameters, compiled graphs: ~650k for a 7B with compiled kernels). Each full collection
    walks them all: ~300 ms on an H100 host's CPU, every third burst of 512 orders (bursts of
    0.79 s took 1.10 s; frozen, every burst took 0.79-0.82 s: bench/GPU_NOTES.md run 27).
    Called once a model is ready; unfreezing first lets a collection free what an earlier
    model left in reference cycles (a model swap keeps the old one frozen until the next)."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


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
