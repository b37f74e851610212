"""`radproto train`: LoRA / QLoRA fine-tuning of the model and its protocol head.

    setup:  data -> base model -> LoRA on the top layers -> protocol head -> optimizer
    run:    per step: lr schedule -> forward/backward over the micro-batches -> optimizer
            -> log -> validation + checkpoint -> stop (max_steps, early stopping, budget)
    finish: best weights -> temperature and abstain threshold on validation -> save -> MLflow

The loss is the cross-entropy over the catalog of the head's logits at each prompt's last
token (one forward pass per order, no label tokens; Label-Supervised LLaMA). LoRA and the
head train together; the head's rows start from the protocols' names (model/head.py). On
CUDA the base is NF4 (QLoRA), the optimizer paged 8-bit AdamW, compute bf16 with gradient
checkpointing, and each micro-batch runs as one packed row without padding (`packing`).
Under torchrun (WORLD_SIZE > 1) each process takes its share of every step's micro-batches
and DDP averages the gradients; only rank 0 logs and saves (training/distributed.py).

A checkpoint (out_dir/checkpoint/state.pt) holds the LoRA and head weights, the best weights
so far, optimizer state, step, data position, early-stopping state, RNG states and the full
config; `--resume` continues from it and ends in the same state as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.catalog import Catalog
from radproto.model.errors import ConfigError, ModelError, RadprotoError
from radproto.model.loading import add_lora, cpu_has_native_bf16
from radproto.training.config import TrainConfig, apply_overrides, load_config, load_preset
from radproto.training.data import (
    encode_rows,
    epoch_batches,
    load_training_data,
    prompt_fields,
    subsample,
)
from radproto.training.distributed import all_max, all_sum, any_rank, init_distributed, shutdown
from radproto.training.packing import pack_examples, pad_examples

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
DEFAULT_PRESET = "default"
_FINISH_SECONDS = 45.0  # saving, the validation report's baseline and MLflow logging


class TrainingInterrupted(RadprotoError):
    """Training stopped at a step boundary on request; the checkpoint holds the state."""


@dataclass
class TrainResult:
    model_dir: Path | None
    steps: int
    stopped: str  # "max_steps", "early_stopping", "time_budget"
    best_val_loss: float
    temperature: float
    seconds: float
    run_id: str = ""
    model_uri: str = ""
    registered_uri: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)  # see Trainer.throughput


# ============================================================================ model
def model_config_for(config: TrainConfig) -> Any:
    from radproto.model.loading import ModelConfig

    return ModelConfig(
        base_model=config.base_model, quantization=config.quantization,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        lora_targets=tuple(config.lora_targets), max_length=config.max_length,
        compute_dtype="auto",
    )


def default_cache_dir(config: TrainConfig) -> Path:
    from radproto.model.loading import default_cache_dir as model_cache_dir

    return Path(config.cache_dir).expanduser() if config.cache_dir else model_cache_dir()


def head_loss_module(model: Any, head: Any, *, label_smoothing: float = 0.0) -> Any:
    """A torch Module (so DDP can wrap the whole forward) returning (loss, logits): the
    cross-entropy over the catalog of the head's logits at each prompt's last token.

    A padded batch gives input_ids [B, T] and lengths [B]; a packed row gives input_ids
    [1, T], position_ids and cu_seqlens (attention bounded per example by the varlen
    kernel registered in model/kernels.py)."""
    import torch
    import torch.nn.functional as F

    from radproto.model.scoring import last_hidden_states, split_model

    class HeadLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.head = head

        def forward(self, input_ids: Any, labels: Any, lengths: Any = None,
                    position_ids: Any = None, cu_seqlens: Any = None,
                    max_seqlen: int = 0) -> tuple[Any, Any]:
            if cu_seqlens is None:
                hidden = last_hidden_states(self.model, input_ids, lengths)
            else:
                backbone, _ = split_model(self.model)
                rows = backbone(input_ids=input_ids, position_ids=position_ids,
                                cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                                max_length_q=max_seqlen, max_length_k=max_seqlen,
                                use_cache=False).last_hidden_state[0]
                hidden = rows.index_select(0, (cu_seqlens[1:] - 1).long())
            logits = self.head(hidden)
            return F.cross_entropy(logits, labels, label_smoothing=label_smoothing), logits

    return HeadLoss()


def prepare_packed(model: Any, compute_dtype: Any) -> str:
    """Ready a peft model for packed rows (in place): varlen attention, frozen weights in
    the compute dtype, lean LoRA. Returns the attention implementation it had."""
    from radproto.model.kernels import (
        VARLEN_ATTENTION,
        cast_frozen_floats,
        lean_lora,
        register_varlen_attention,
        set_attention,
    )

    register_varlen_attention()
    previous = set_attention(model, VARLEN_ATTENTION)
    cast_frozen_floats(model, compute_dtype)
    lean_lora(model)
    return previous


def _trainable(module: Any) -> dict[str, Any]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _weights(module: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in _trainable(module).items()}


def _load_weights(module: Any, state: dict[str, Any]) -> None:
    import torch

    params = _trainable(module)
    missing = set(params) - set(state)
    if missing:
        raise ModelError(f"checkpoint lacks {len(missing)} trained tensors, e.g. {min(missing)}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


# ============================================================================ schedule
def learning_rate(progress: float, step: int, config: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine / linear decay to min_lr_ratio * peak."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / (config.warmup_steps + 1)
    floor = peak * config.min_lr_ratio
    progress = min(max(progress, 0.0), 1.0)
    if config.lr_schedule == "constant":
        return peak
    if config.lr_schedule == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ============================================================================ trainer
class Trainer:
    """Holds the run's state; `run()` trains, `finish()` calibrates, saves and registers."""

    def __init__(self, config: TrainConfig, catalog: Catalog, *, resume: bool = False,
                 progress: bool = True,
                 on_step: Callable[[int, Trainer], None] | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.resume = resume
        self.progress = progress
        self.on_step = on_step
        self.stop_requested = False
        self.out_dir = Path(config.out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE

    def request_stop(self) -> None:
        """Stop at the next step boundary, checkpoint and raise TrainingInterrupted."""
        self.stop_requested = True

    # ------------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch

        from radproto.model.head import new_head, offload_output_embeddings
        from radproto.model.loading import load_base_model, resolve_dtype

        config = self.config
        self.started = time.perf_counter()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dist = init_distributed(self.device)
        if self.device == "cuda":
            self.device = f"cuda:{self.dist.local_rank}"
            torch.cuda.set_device(self.device)
        on_cuda = self.device.startswith("cuda")
        self.precision = resolve_precision(config.precision, self.device)
        self.grad_ckpt = config.gradient_checkpointing == "on" or (
            config.gradient_checkpointing == "auto" and on_cuda)
        self.optimizer_kind = config.optimizer if config.optimizer != "auto" else (
            "paged_adamw_8bit" if on_cuda else "adamw")

        # -- data ------------------------------------------------------------------------
        self.train_rows, valid_rows = load_training_data(config, self.catalog)
        self.val_rows = subsample(valid_rows, config.val_size, config.seed)
        # Calibration's inputs, ready before training so that a wall budget counts them.
        self.calibration_rows: list[dict[str, Any]] = []
        self.lexical = None
        if config.calibrate and self.dist.main:
            if config.calibration_data:
                from radproto.training.orderfile import read_orders

                self.calibration_rows = read_orders(config.calibration_data,
                                                    require_label=True)
            if config.lexical:
                from radproto.training.lexical import fit_lexical

                self.lexical = fit_lexical(self.train_rows, self.catalog.names)

        # -- model: base, LoRA, head -----------------------------------------------------
        self.model_config = model_config_for(config)
        model, tokenizer = load_base_model(self.model_config, self.device,
                                           cache_dir=default_cache_dir(config))
        self.packing = config.packing == "on" or (config.packing == "auto" and on_cuda)
        if getattr(model, "is_loaded_in_4bit", False) and not self.packing:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=self.grad_ckpt,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(config.seed)  # the LoRA init is part of the reproducible state
        head = new_head(model, tokenizer, self.catalog.names)  # rows from the base's names
        if self.dist.world == 1:  # DDP wants every parameter on one device type
            offload_output_embeddings(model)  # the head reads hidden states, not the vocabulary
        model = add_lora(model, self.model_config, top_layers=config.lora_layers,
                         prepare_kbit=False)  # prepared above, for this loop
        if self.grad_ckpt:
            model.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if self.packing:
            self._attention = prepare_packed(model, resolve_dtype(self.model_config,
                                                                   self.device))
        self.model, self.tokenizer, self.head = model, tokenizer, head
        self.train_examples = encode_rows(tokenizer, self.train_rows, self.catalog,
                                          config.max_length)
        self.val_examples = encode_rows(tokenizer, self.val_rows, self.catalog,
                                        config.max_length)
        self.lengths = [len(e["input_ids"]) for e in self.train_examples]
        self.loss_module = head_loss_module(model, head,
                                            label_smoothing=config.label_smoothing)
        self.wrapped = self.loss_module
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(self.loss_module,
                               device_ids=[self.device] if on_cuda else None)

        # -- optimizer: LoRA and head, the head at its own rate if given ------------------
        lora = [p for n, p in _trainable(self.loss_module).items() if not n.startswith("head.")]
        head_params = list(head.parameters())
        head_lr = config.head_learning_rate or config.learning_rate
        self._lr_scale = [1.0, head_lr / config.learning_rate]
        groups = [{"params": lora}, {"params": head_params}]
        if self.optimizer_kind == "paged_adamw_8bit":
            import bitsandbytes as bnb

            self.optimizer = bnb.optim.PagedAdamW8bit(groups, lr=config.learning_rate,
                                                      weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate,
                                               weight_decay=config.weight_decay)
        self.params = lora + head_params

        micro_per_epoch = math.ceil(len(self.train_examples) / config.batch_size)
        per_step = config.grad_accum * self.dist.world
        self.steps_per_epoch = max(1, micro_per_epoch // per_step)
        self.max_steps = config.max_steps or max(1, math.ceil(config.epochs
                                                               * self.steps_per_epoch))

        # -- state (fresh or from the checkpoint) ----------------------------------------
        self.step = 0
        self.epoch = 0
        self.position = 0  # next micro-batch index in the epoch's batch list
        self.best_val = math.inf
        self.best_step = 0
        self.best_state: dict[str, Any] | None = None
        self.bad_evals = 0
        self.train_seconds = 0.0
        self.budget_seconds = config.time_budget_minutes * 60  # 0: none; run() may lower it
        self.eval_seconds = 0.0  # the last validation pass's duration
        # throughput of this process's steps (not checkpointed: a resumed run counts anew)
        self.tokens_trained = 0
        self.step_seconds = 0.0
        self.history: list[dict[str, float]] = []
        self.run_id = ""
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        if self.resume and self.checkpoint_path.is_file():
            self._load_checkpoint()
        elif self.resume:
            log.warning("no checkpoint at %s: starting from scratch", self.checkpoint_path)
        self._batches_epoch = -1
        self._batches: list[list[int]] = []

        # -- tracking --------------------------------------------------------------------
        from radproto.training.tracking import Tracker

        uri = config.tracking_uri if self.dist.main else ""
        self.tracker = Tracker(uri, config.experiment, run_id=self.run_id or None,
                               run_name=self.out_dir.name,
                               tags={"radproto.kind": "training"})
        self.run_id = self.tracker.run_id
        self.tracker.log_params({
            **config.to_dict(), "n_train": len(self.train_examples),
            "n_val": len(self.val_examples), "world_size": self.dist.world,
            "device": self.device, "resolved_precision": self.precision,
            "resolved_packing": self.packing,
            "resolved_optimizer": self.optimizer_kind, "max_steps_resolved": self.max_steps,
            "catalog_version": self.catalog.version,
            "trainable_params": sum(p.numel() for p in self.params),
        })

    def _autocast(self) -> Any:
        import torch

        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)

    # ------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        import torch

        if not self.dist.main:
            return
        state = {
            "config": self.config.to_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "weights": _weights(self.loss_module),
            "best_weights": self.best_state, "best_val": self.best_val,
            "best_step": self.best_step, "bad_evals": self.bad_evals,
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                    else None},
            "train_seconds": self.train_seconds, "history": self.history,
            "run_id": self.run_id, "catalog_version": self.catalog.version,
        }
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint_path.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path)  # atomic: a crash never leaves half a file

    def _load_checkpoint(self) -> None:
        import torch

        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        if state["config"] != self.config.to_dict():
            changed = sorted(k for k, v in state["config"].items()
                             if self.config.to_dict().get(k) != v)
            log.warning("resuming with a changed config (%s); the checkpoint's holds",
                        ", ".join(changed))
        if state.get("catalog_version") != self.catalog.version:
            raise ModelError(f"{self.checkpoint_path}: trained on another catalog "
                             f"({state.get('catalog_version')}); start afresh")
        _load_weights(self.loss_module, state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best_state, self.best_val = state["best_weights"], state["best_val"]
        self.best_step, self.bad_evals = state["best_step"], state["bad_evals"]
        self.train_seconds, self.history = state["train_seconds"], state["history"]
        self.run_id = state.get("run_id") or ""
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        log.info("resumed at step %d (epoch %d, batch %d)", self.step, self.epoch,
                 self.position)

    # ------------------------------------------------------------------------ pieces
    def _next_micro_batches(self) -> list[list[int]]:
        """This process's micro-batches for one optimizer step (advances the data position)."""
        config, world = self.config, self.dist.world
        need = config.grad_accum * world
        if self._batches_epoch != self.epoch:
            self._batches = epoch_batches(self.lengths, config.batch_size, seed=config.seed,
                                          epoch=self.epoch,
                                          group_by_length=config.group_by_length)
            self._batches_epoch = self.epoch
        if self.position + need > len(self._batches):
            self.epoch += 1
            self.position = 0
            return self._next_micro_batches()
        chunk = self._batches[self.position:self.position + need]
        self.position += need
        return chunk[self.dist.rank::world]

    def _micro_loss(self, module: Any, examples: Sequence[dict[str, Any]]
                    ) -> tuple[Any, Any, int]:
        """(mean loss, logits, real tokens) of one micro-batch through `module` (the loss
        module or its DDP wrapper), packed or padded."""
        real_tokens = sum(len(e["input_ids"]) for e in examples)
        if self.packing:
            row = pack_examples(examples).to(self.device)
            loss, logits = module(input_ids=row.input_ids, labels=row.labels,
                                  position_ids=row.position_ids, cu_seqlens=row.cu_seqlens,
                                  max_seqlen=row.max_seqlen)
        else:
            batch = pad_examples(examples, self.tokenizer.pad_token_id)
            loss, logits = module(**{k: v.to(self.device) for k, v in batch.items()})
        return loss, logits, real_tokens

    def validation(self) -> tuple[float, float]:
        """(mean loss, top-1 accuracy) over the validation subset (shared over the ranks)."""
        import torch

        total, correct, count = 0.0, 0.0, 0
        mine = list(range(len(self.val_examples)))[self.dist.rank::self.dist.world]
        mine.sort(key=lambda i: len(self.val_examples[i]["input_ids"]))
        self.loss_module.eval()
        size = self.config.batch_size * 2
        with torch.no_grad(), self._autocast():
            for start in range(0, len(mine), size):
                examples = [self.val_examples[i] for i in mine[start:start + size]]
                loss, logits, _ = self._micro_loss(self.loss_module, examples)
                labels = torch.tensor([e["label"] for e in examples], device=logits.device)
                total += float(loss) * len(examples)
                correct += float((logits.argmax(-1) == labels).sum())
                count += len(examples)
        self.loss_module.train()
        total, correct, count = all_sum([total, correct, float(count)], self.dist)
        return total / max(count, 1.0), correct / max(count, 1.0)

    def throughput(self) -> dict[str, Any]:
        """Real (non-padding) training tokens per second of optimizer steps (validation
        excluded), over all ranks, and the peak GPU memory of this process."""
        import torch

        figures: dict[str, Any] = {
            "packing": self.packing, "world_size": self.dist.world,
            "tokens": self.tokens_trained * self.dist.world,
            "tokens_per_second": round(self.tokens_trained * self.dist.world
                                       / max(self.step_seconds, 1e-9), 1),
        }
        if self.device.startswith("cuda"):
            figures["peak_gpu_memory_gb"] = round(
                torch.cuda.max_memory_allocated(self.device) / 1e9, 3)
        return figures

    def _progress(self) -> float:
        by_steps = self.step / self.max_steps
        budget = self.budget_seconds
        if budget <= 0:
            return by_steps
        return max(by_steps, self.train_seconds / budget)

    def classifier(self) -> Any:
        """The model in training as a ProtocolClassifier (temperature 1)."""
        from radproto.model.classifier import ProtocolClassifier

        return ProtocolClassifier(self.model, self.tokenizer, self.catalog, head=self.head,
                                  config=self.model_config, cuda_graphs=False)

    def _fit_wall_budget(self) -> None:
        """Lower the training budget so that calibration and saving still fit the wall
        budget; calibration's cost is measured here on a few orders."""
        wall = self.config.wall_budget_minutes * 60
        if wall <= 0:
            return
        probe = self.val_rows[:8]
        start = time.perf_counter()
        self.classifier().catalog_log_probs(prompt_fields(probe))
        per_order = (time.perf_counter() - start) / max(len(probe), 1)
        self.loss_module.train()
        calib = (self._calibration_size() + len(self.calibration_rows)
                 if self.config.calibrate else 0)
        reserve = 1.15 * calib * per_order + _FINISH_SECONDS
        left = wall - (time.perf_counter() - self.started) - reserve
        left = all_sum([max(left, 0.0)], self.dist)[0] / self.dist.world  # one budget for all
        budget = self.train_seconds + max(left, 1e-3)  # > 0: a budget of 0 means "none"
        if self.budget_seconds <= 0 or budget < self.budget_seconds:
            log.info("wall budget %.0f s: %.0f s left for training (calibration ~%.0f s)",
                     wall, left, reserve - _FINISH_SECONDS)
            self.budget_seconds = budget

    def _calibration_size(self) -> int:
        size = self.config.calib_size or len(self.val_rows)
        return min(size, len(self.val_rows))

    def _evaluate_and_checkpoint(self) -> bool:
        """Validation, best-weights bookkeeping, checkpoint; True = stop early."""
        started = time.perf_counter()
        val, accuracy = self.validation()
        self.eval_seconds = time.perf_counter() - started
        improved = val < self.best_val - self.config.min_delta
        if improved:
            self.best_val, self.best_step, self.bad_evals = val, self.step, 0
            self.best_state = _weights(self.loss_module)
        else:
            self.bad_evals += 1
        self.history.append({"step": self.step, "val_loss": val, "val_top1": accuracy})
        self.tracker.log_metrics({"val_loss": val, "best_val_loss": self.best_val,
                                  "val_top1": accuracy}, step=self.step)
        log.info("step %d: validation loss %.4f, top-1 %.3f%s", self.step, val, accuracy,
                 " (best)" if improved else f" (no gain x{self.bad_evals})")
        self._save_checkpoint()
        return self.config.patience > 0 and self.bad_evals >= self.config.patience

    # ------------------------------------------------------------------------ loop
    def run(self) -> str:
        """Train until max_steps, early stopping or the time budget; returns why it stopped."""
        import torch

        config = self.config
        self.loss_module.train()
        bar = None
        if self.progress and self.dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_steps, initial=self.step, unit="step",
                       desc="train", dynamic_ncols=True)
        self._fit_wall_budget()
        previous = _install_stop_handlers(self)
        self._start_step, self._start_seconds = self.step, self.train_seconds
        stopped = "max_steps"
        window_loss, window_steps, window_examples, window_start = 0.0, 0, 0, time.perf_counter()
        window_tokens = 0
        try:
            if self.step == 0 and self.best_state is None:
                self._evaluate_and_checkpoint()  # the baseline every later eval must beat
            clock = time.perf_counter()  # the budget counts wall time: steps and evals
            while self.step < self.max_steps:
                # -- lr schedule ---------------------------------------------------------
                lr = learning_rate(self._progress(), self.step, config)
                for group, scale in zip(self.optimizer.param_groups, self._lr_scale,
                                        strict=True):
                    group["lr"] = lr * scale
                # -- forward / backward --------------------------------------------------
                micro = self._next_micro_batches()
                step_loss = 0.0
                step_start = time.perf_counter()
                for index, batch_ids in enumerate(micro):
                    sync = index == len(micro) - 1
                    ctx = self.wrapped.no_sync() if (self.dist.world > 1 and not sync) \
                        else contextlib.nullcontext()
                    with ctx, self._autocast():
                        loss, _, real_tokens = self._micro_loss(
                            self.wrapped, [self.train_examples[i] for i in batch_ids])
                        scaled = loss / len(micro)
                    scaled.backward()
                    step_loss += float(loss.detach()) / len(micro)
                    window_examples += len(batch_ids)
                    window_tokens += real_tokens
                    self.tokens_trained += real_tokens
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step_seconds += time.perf_counter() - step_start
                if not math.isfinite(step_loss):
                    raise ModelError(f"training loss is {step_loss} at step {self.step}")
                self.step += 1
                # -- log -----------------------------------------------------------------
                window_loss += step_loss
                window_steps += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.1e}")
                if self.step % config.log_interval == 0 or self.step == self.max_steps:
                    elapsed = time.perf_counter() - window_start
                    self.tracker.log_metrics({
                        "train_loss": window_loss / window_steps, "lr": lr,
                        "examples_per_s": window_examples * self.dist.world / max(elapsed, 1e-9),
                        # real (non-padding) tokens, all ranks (each rank's share is alike)
                        "tokens_per_s": window_tokens * self.dist.world / max(elapsed, 1e-9),
                        "epoch": self.epoch + self.position / max(len(self._batches), 1),
                    }, step=self.step)
                    window_loss, window_steps, window_examples, window_tokens = 0.0, 0, 0, 0
                    window_start = time.perf_counter()
                # -- eval + checkpoint, stop ---------------------------------------------
                now = time.perf_counter()
                self.train_seconds += now - clock
                clock = now
                if self.dist.world > 1:
                    # One clock for all ranks: the schedule's time progress and the stop
                    # below must agree, or the ranks' weights drift and a collective hangs.
                    self.train_seconds, self.eval_seconds = all_max(
                        [self.train_seconds, self.eval_seconds], self.dist)
                budget = self.budget_seconds
                # Stop one mean step early rather than one step late, and leave room for
                # the validation pass that ends training.
                mean_step = (self.train_seconds - self._start_seconds) / max(
                    self.step - self._start_step, 1)
                out_of_time = budget > 0 and (
                    self.train_seconds + mean_step + self.eval_seconds > budget)
                last = self.step == self.max_steps or out_of_time
                if (self.step % config.eval_interval == 0 or last) and \
                        self._evaluate_and_checkpoint():
                    stopped = "early_stopping"
                    break
                now = time.perf_counter()
                self.train_seconds += now - clock
                clock = now
                if out_of_time:
                    stopped = "time_budget"
                    break
                if self.on_step is not None:
                    self.on_step(self.step, self)
                if any_rank(self.stop_requested, self.dist):
                    if self.step % config.eval_interval != 0:
                        self._save_checkpoint()
                    raise TrainingInterrupted(f"stopped at step {self.step}; resume with "
                                              f"--resume (checkpoint {self.checkpoint_path})")
        finally:
            _restore_stop_handlers(previous)
            if bar is not None:
                bar.close()
        self.stopped = stopped
        log.info("training stopped (%s) at step %d after %.0f s; best validation loss %.4f "
                 "at step %d", stopped, self.step, self.train_seconds, self.best_val,
                 self.best_step)
        return stopped

    # ------------------------------------------------------------------------ finish
    def _register(self, classifier: Any, model_uri: str) -> str:
        """A new registry version; the alias moves to it only if it is at least as good as
        the alias's holder on the development set (training/promotion.py) or --force."""
        from radproto.training.promotion import decide
        from radproto.training.tracking import register_model, set_alias

        config = self.config
        uri = register_model(model_uri, config.register_name,
                             tracking_uri=config.tracking_uri, run_id=self.run_id)
        if not config.alias:
            return uri
        decision = decide(classifier, name=config.register_name, alias=config.alias,
                          tracking_uri=config.tracking_uri, catalog=self.catalog,
                          data=config.promotion_data, force=config.force)
        self.tracker.set_tags(decision.tags())
        if not decision.promote:
            log.warning("registered %s but %s@%s stays where it is: %s", uri,
                        config.register_name, config.alias, decision.reason)
            return uri
        set_alias(config.register_name, config.alias, uri.rsplit("/", 1)[1],
                  tracking_uri=config.tracking_uri)
        log.log(logging.WARNING if config.force else logging.INFO,
                "%s@%s -> %s (%s)", config.register_name, config.alias, uri, decision.reason)
        return f"models:/{config.register_name}@{config.alias}"

    def finish(self) -> TrainResult:
        """Best weights back; the lexical model fitted on the training rows; blend weight,
        temperature and abstain threshold fitted on calibration_data (else the validation
        subset); model saved; validation report; MLflow artifacts and registration (rank 0)."""
        from radproto.training.calibrate import calibrate, labelled_fields
        from radproto.training.metrics import coverage_at
        from radproto.training.report import build_report

        if self.best_state is not None:
            _load_weights(self.loss_module, self.best_state)
        if self.packing:  # score with the attention the service uses
            from radproto.model.kernels import set_attention

            set_attention(self.model, self._attention)
        self.loss_module.eval()
        result = TrainResult(model_dir=None, steps=self.step, stopped=self.stopped,
                             best_val_loss=self.best_val, temperature=1.0,
                             seconds=time.perf_counter() - self.started, run_id=self.run_id,
                             throughput=self.throughput())
        if not self.dist.main:
            return result
        classifier = self.classifier()
        classifier.merge_for_cpu()  # calibrate the scores the service will compute
        calib_rows = subsample(self.val_rows, self._calibration_size(), self.config.seed + 1)
        labels = np.array([self.catalog.names.index(r["label"]) for r in calib_rows])
        score_start = time.perf_counter()
        # in the service's precision: the temperature must fit the scores it will scale
        val_fields = prompt_fields(calib_rows)
        head_log_probs = classifier.head_log_probs(val_fields)
        score_seconds = time.perf_counter() - score_start
        calibration = None
        if self.config.calibrate and self.calibration_rows:
            source = self.config.calibration_data
            fields, fit_labels = labelled_fields(self.calibration_rows, self.catalog,
                                                 source=source)
            calibration = calibrate(classifier, fields, fit_labels, lexical=self.lexical,
                                    abstain_accuracy=self.config.abstain_accuracy,
                                    fitted_on=f"{len(fit_labels)} orders of {source}")
        elif self.config.calibrate:
            calibration = calibrate(classifier, val_fields, labels, lexical=self.lexical,
                                    abstain_accuracy=self.config.abstain_accuracy,
                                    fitted_on=f"{len(calib_rows)} validation orders",
                                    head_log_probs=head_log_probs)
        log_probs = classifier.blend(head_log_probs, val_fields)
        if self.config.abstain_threshold >= 0:  # a fixed threshold overrides the derived one
            classifier.abstain_threshold = self.config.abstain_threshold
        elif calibration is None:  # nothing fitted: derived from the validation scores
            probs = classifier.probabilities(log_probs)
            _, classifier.abstain_threshold = coverage_at(
                probs.max(axis=1), probs.argmax(axis=1) == labels,
                self.config.abstain_accuracy)
        threshold = classifier.abstain_threshold
        result.temperature = classifier.temperature
        metadata = {
            "train": {"steps": self.step, "stopped": self.stopped,
                      "best_step": self.best_step, "best_val_loss": self.best_val,
                      "train_seconds": round(self.train_seconds, 1),
                      "budget_seconds": round(self.budget_seconds, 3),
                      "n_train": len(self.train_examples), "n_val": len(self.val_examples),
                      "lora_layers": self.config.lora_layers, "run_id": self.run_id,
                      "seed": self.config.seed, "device": self.device,
                      "precision": self.precision,
                      "throughput": result.throughput,
                      "calibration": ({"method": "blend weight and temperature scaling",
                                       **calibration.to_dict()} if calibration else
                                      {"method": "none", "temperature": 1.0,
                                       "abstain_threshold": threshold})},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        classifier.save(self.out_dir, metadata=metadata)
        (self.out_dir / "train_config.json").write_text(
            json.dumps(self.config.to_dict(), indent=2), "utf-8")
        result.model_dir = self.out_dir

        # -- validation report (the calibration scores: no extra model passes) ----------
        report_dir = self.out_dir / "validation_report"
        metrics = build_report(
            log_probs, labels, self.catalog, temperature=classifier.temperature,
            out_dir=report_dir, rows=calib_rows,
            baseline_train=self.train_rows if self.config.baseline else None,
            title="Validation subset (also used for temperature fitting)",
            seconds_per_order=score_seconds / max(len(calib_rows), 1))
        result.metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        self.tracker.log_metrics({f"val_{k}": v for k, v in result.metrics.items()},
                                 step=self.step)
        self.tracker.log_metrics({"temperature": classifier.temperature,
                                  "train_seconds": self.train_seconds}, step=self.step)

        # -- MLflow artifacts, model, registry -------------------------------------------
        from radproto.model.prompt import PROMPT_VERSION, render_prompt

        if self.tracker.enabled:
            self.tracker.log_text(self.catalog.to_json(), "catalog/catalog.json")
            self.tracker.log_text(
                f"prompt version {PROMPT_VERSION} (the protocol head reads its last token)"
                "\n\n" + render_prompt({k: "{" + k + "}" for k in ("ordered_exam", "history",
                                                                   "diagnosis", "notes")})
                + "\n", "prompt/prompt.txt")
            self.tracker.log_dict(self.config.to_dict(), "config/train_config.json")
            self.tracker.log_dict({"temperature": classifier.temperature,
                                   "abstain_threshold": classifier.abstain_threshold,
                                   "fitted_on": len(calib_rows)},
                                  "calibration/calibration.json")
            self.tracker.log_artifacts(report_dir, "validation_report")
            result.model_uri = self.tracker.log_model(self.out_dir)
            self.tracker.set_tags({"radproto.model_version": classifier.model_version,
                                   "radproto.stopped": self.stopped})
            if self.config.register_name:
                result.registered_uri = self._register(classifier, result.model_uri)
            self.tracker.end()
        result.seconds = time.perf_counter() - self.started
        return result


def _install_stop_handlers(trainer: Trainer) -> dict[int, Any]:
    """SIGINT/SIGTERM ask for a stop at the next step boundary (state stays consistent)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("stopping after this step (Ctrl-C again to abort at once)")
        trainer.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_stop_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


# ============================================================================ entry points
def train(config: TrainConfig, catalog: Catalog, *, resume: bool = False,
          progress: bool = True,
          on_step: Callable[[int, Trainer], None] | None = None) -> TrainResult:
    """Train, calibrate, save to config.out_dir, log to MLflow, register if configured."""
    if config.calibrate and config.calibration_data and \
            not Path(config.calibration_data).is_file():
        # found out now, not after the training run
        raise ConfigError(f"calibration_data '{config.calibration_data}' is not a file (the "
                          "default preset fits on eval/tune.jsonl of a radproto checkout; "
                          "give another labelled order file or --set calibration_data=)",
                          field="calibration_data")
    trainer = Trainer(config, catalog, resume=resume, progress=progress, on_step=on_step)
    if resume and trainer.checkpoint_path.is_file():
        import torch

        saved = torch.load(trainer.checkpoint_path, map_location="cpu", weights_only=False)
        trainer.config = config = _resume_config(saved["config"], config)
    trainer.setup()
    try:
        trainer.run()
        result = trainer.finish()
    finally:
        shutdown(trainer.dist)
    if result.model_dir is not None:
        log.info("model saved to %s (temperature %.3f)%s", result.model_dir,
                 result.temperature,
                 f"; registered as {result.registered_uri}" if result.registered_uri else "")
    return result


def _resume_config(saved: dict[str, Any], given: TrainConfig) -> TrainConfig:
    """The checkpoint's config; only where the model goes and is registered may change."""
    from radproto.training.config import from_mapping

    data = dict(saved)
    for key in ("tracking_uri", "register_name", "alias", "out_dir"):
        data[key] = getattr(given, key)
    return from_mapping(data)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The config from --config / --preset, then the flags, then --set overrides."""
    config = load_config(args.config) if getattr(args, "config", None) else \
        load_preset(getattr(args, "preset", None) or DEFAULT_PRESET)
    changes: dict[str, Any] = {}
    if getattr(args, "data", None):
        changes["data"] = [str(p) for p in args.data]
    if getattr(args, "out", None):
        changes["out_dir"] = str(args.out)
    if getattr(args, "register", None):
        changes["register_name"] = args.register
    if getattr(args, "alias", None):
        changes["alias"] = args.alias
    if getattr(args, "force", False):
        changes["force"] = True
    if getattr(args, "tracking_uri", None) is not None:
        changes["tracking_uri"] = args.tracking_uri
    if changes:
        config = config.replace(**changes)
    return apply_overrides(config, getattr(args, "overrides", None) or [])


def train_from_cli(args: argparse.Namespace, *, catalog: Catalog) -> int:
    config = resolve_config(args)
    try:
        result = train(config, catalog, resume=bool(args.resume))
    except TrainingInterrupted as exc:
        print(str(exc))
        return 130
    if result.model_dir is None:  # a DDP rank other than 0
        return 0
    print(f"model: {result.model_dir}")
    print(f"steps: {result.steps} ({result.stopped}); best validation loss "
          f"{result.best_val_loss:.4f}; temperature {result.temperature:.3f}; "
          f"{result.seconds / 60:.1f} min")
    speed = result.throughput
    print(f"training: {speed['tokens_per_second']:.0f} real tokens/s over "
          f"{speed['world_size']} process(es), packing {'on' if speed['packing'] else 'off'}"
          + (f", peak GPU memory {speed['peak_gpu_memory_gb']:.2f} GB"
             if "peak_gpu_memory_gb" in speed else ""))
    wanted = ("top1", "top3", "coverage_at_95", "ece", "baseline_top1")
    print("validation: " + ", ".join(f"{k} {result.metrics[k]:.3f}" for k in wanted
                                     if k in result.metrics))
    if result.run_id:
        print(f"mlflow run: {result.run_id} ({config.tracking_uri})")
    if result.registered_uri:
        print(f"registered: {result.registered_uri}")
    return 0


def resolve_precision(requested: str, device: str) -> str:
    """ "fp32" or "bf16" for a config's precision ("auto" decides by the hardware)."""
    if requested != "auto":
        return requested
    return "bf16" if device.startswith("cuda") or cpu_has_native_bf16() else "fp32"
