"""`radproto train`: the LoRA / QLoRA fine-tune loop, written out top to bottom.

    data -> model init -> optimizer -> loop (lr schedule, eval + checkpoint,
    forward/backward, log, stop) -> calibrate -> save -> MLflow

The loss covers the protocol tokens and EOS only (labels are -100 on the prompt, from
`encode_example`), and the vocabulary projection runs on those positions only. On CUDA the
base is NF4 (QLoRA), the optimizer paged 8-bit AdamW, compute bf16 with gradient
checkpointing, and each micro-batch runs as one packed row without padding (`packing`,
model/fast_train.py: same examples, same loss, several times the padded path's speed).
Under torchrun / accelerate (WORLD_SIZE > 1) each process takes its share of
every step's micro-batches and DDP averages the gradients; only rank 0 logs and saves.

A checkpoint (out_dir/checkpoint/state.pt) holds the LoRA weights, the best weights so far,
optimizer state, step, data position, early-stopping state, RNG states and the full config;
`--resume` continues from it and ends in the same state as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
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
from radproto.model.errors import ConfigError, ModelError
from radproto.training.config import (
    TrainConfig,
    apply_overrides,
    load_config,
    load_preset,
)
from radproto.training.packing import pack_examples, pad_examples

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
DEFAULT_PRESET = "default-cpu"
DEFAULT_MODEL_NAME = "radproto"
DEFAULT_ALIAS = "champion"
_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev")}
_ORDER_SUFFIXES = (".jsonl", ".parquet", ".csv", ".ndjson", ".json")


class TrainingInterrupted(Exception):
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


# ============================================================================ data
def _split_file(directory: Path, split: str) -> Path | None:
    for stem in _SPLIT_NAMES[split]:
        for suffix in _ORDER_SUFFIXES:
            candidate = directory / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _stable_bucket(row: dict[str, Any], seed: int) -> float:
    key = row.get("id") or json.dumps([row.get(k, "") for k in sorted(row) if k != "label"],
                                      sort_keys=True, default=str)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_training_data(config: TrainConfig, catalog: Catalog
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, validation rows), labels resolved to catalog names.

    A corpus directory gives its train and validation splits; an order file (a site's
    history) is split by a stable hash of each row into train and val_fraction validation.
    """
    from radproto.training.orderfile import read_orders

    if not config.data:
        raise ConfigError("no training data: give --data or set 'data' in the config",
                          field="data")
    train: list[dict[str, Any]] = []
    valid: list[dict[str, Any]] = []
    for item in config.data:
        path = Path(item)
        if path.is_dir():
            train_file = _split_file(path, "train")
            if train_file is None:
                raise ConfigError(f"'{path}' holds no train.jsonl/.parquet/.csv", field="data")
            train += read_orders(train_file, require_label=True)
            valid_file = _split_file(path, "validation")
            if valid_file is not None:
                valid += read_orders(valid_file, require_label=True)
            else:
                log.warning("%s has no validation split; holding out part of train", path)
                rows, train = train, []
                for row in rows:
                    (valid if _stable_bucket(row, config.seed) < config.val_fraction
                     else train).append(row)
        elif path.is_file():
            for row in read_orders(path, require_label=True):
                (valid if _stable_bucket(row, config.seed) < config.val_fraction
                 else train).append(row)
        else:
            raise ConfigError(f"no such corpus directory or order file: '{path}'", field="data")
    train, unknown_train = _resolve_labels(train, catalog)
    valid, unknown_valid = _resolve_labels(valid, catalog)
    if unknown_train or unknown_valid:
        log.warning("skipped %d rows whose label is not in the catalog",
                    unknown_train + unknown_valid)
    if not train:
        raise ConfigError("no training rows with a catalog label", field="data")
    if not valid:
        raise ConfigError("no validation rows with a catalog label", field="data")
    return train, valid


def _resolve_labels(rows: list[dict[str, Any]], catalog: Catalog
                    ) -> tuple[list[dict[str, Any]], int]:
    kept, unknown = [], 0
    for row in rows:
        name = catalog.resolve(str(row.get("label", "")))
        if name is None:
            unknown += 1
            continue
        kept.append({**row, "label": name})
    return kept, unknown


def subsample(rows: list[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """A fixed random subset (the whole list when size is 0 or larger than it)."""
    if size <= 0 or size >= len(rows):
        return list(rows)
    picked = sorted(random.Random(f"val-{seed}").sample(range(len(rows)), size))
    return [rows[i] for i in picked]


def epoch_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                  group_by_length: bool) -> list[list[int]]:
    """The micro-batches of one epoch: a seeded shuffle, then (optionally) examples of
    similar length grouped inside windows of 64 batches, the batch order shuffled again."""
    rng = random.Random(f"order-{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 64
        grouped: list[int] = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start:start + window], key=lambda i: lengths[i])
        order = grouped
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


# ============================================================================ model
def model_config_for(config: TrainConfig) -> Any:
    from radproto.model.classifier import ModelConfig

    return ModelConfig(
        base_model=config.base_model, quantization=config.quantization,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        lora_targets=tuple(config.lora_targets), max_length=config.max_length,
        compute_dtype="auto",
    )


def default_cache_dir(config: TrainConfig) -> Path:
    return Path(config.cache_dir).expanduser() if config.cache_dir else \
        Path.home() / ".cache" / "radproto"


def add_lora_layers(model: Any, config: TrainConfig) -> Any:
    """LoRA on the configured linear layers, restricted to the top `lora_layers` layers."""
    from peft import LoraConfig, get_peft_model

    n_layers = int(model.config.num_hidden_layers)
    layers = None
    if 0 < config.lora_layers < n_layers:
        layers = list(range(n_layers - config.lora_layers, n_layers))
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM",
        layers_to_transform=layers,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ModelError(f"cannot add LoRA to the model: {exc}") from exc


def _loss_module(model: Any, *, packed: bool) -> Any:
    """Mean cross-entropy over the label tokens, the LM head applied at those positions only
    (a torch Module, so DDP can wrap the whole loss forward). `packed`: the micro-batch comes
    as one padding-free row (fast_train.packed_label_loss), else as a padded batch."""
    import torch
    import torch.nn.functional as F

    from radproto.model.fast_train import packed_label_loss
    from radproto.model.scoring import split_model

    class _LabelLoss(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
            backbone, head = split_model(self.inner)
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != -100
            rows = hidden[:, :-1][keep]  # only the positions that predict a label token
            logits = head(rows).float()
            return F.cross_entropy(logits, targets[keep])

    class _PackedLabelLoss(_LabelLoss):
        def forward(self, input_ids: Any, position_ids: Any, targets: Any, cu_seqlens: Any,
                    positions: Any, max_seqlen: int) -> Any:
            return packed_label_loss(self.inner, input_ids, position_ids, targets, cu_seqlens,
                                     max_seqlen, positions)

    return (_PackedLabelLoss if packed else _LabelLoss)(model)


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _lora_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in _trainable(model).items()}


def _load_lora_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    params = _trainable(model)
    missing = set(params) - set(state)
    if missing:
        raise ModelError(f"checkpoint lacks {len(missing)} LoRA tensors, e.g. {min(missing)}")
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


# ============================================================================ distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun / accelerate launched us into (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _prompt_fields(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The four fields the prompt reads, of each order-file row."""
    return [{k: r.get(k, "") for k in ("ordered_exam", "history", "diagnosis", "notes")}
            for r in rows]


_FINISH_SECONDS = 45.0  # saving, the validation report's baseline and MLflow logging


def _all_sum(values: list[float], dist_info: Dist) -> list[float]:
    return _all_reduce(values, dist_info, "SUM")


def _all_max(values: list[float], dist_info: Dist) -> list[float]:
    return _all_reduce(values, dist_info, "MAX")


def _all_reduce(values: list[float], dist_info: Dist, op: str) -> list[float]:
    if dist_info.world <= 1:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor.tolist()


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
        from radproto.model.classifier import encode_example

        self.train_rows, valid_rows = load_training_data(config, self.catalog)
        self.val_rows = subsample(valid_rows, config.val_size, config.seed)

        # -- model init ------------------------------------------------------------------
        from radproto.model.classifier import load_base_model

        self.model_config = model_config_for(config)
        model, tokenizer = load_base_model(self.model_config, self.device,
                                           cache_dir=default_cache_dir(config))
        self.packing = config.packing == "on" or (config.packing == "auto" and on_cuda)
        if getattr(model, "is_loaded_in_4bit", False) and not self.packing:
            # (the packed path keeps the frozen floats in the compute dtype instead of the
            # float32 this casts them to; non-reentrant checkpointing needs no input grads)
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=self.grad_ckpt,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(config.seed)  # the LoRA init is part of the reproducible state
        model = add_lora_layers(model, config)
        if self.grad_ckpt:
            model.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if self.packing:
            from radproto.model.fast_train import prepare_fast_training
            from radproto.model.loading import resolve_dtype

            self._attention = prepare_fast_training(
                model, gradient_checkpointing=False,  # enabled above, for both paths
                compute_dtype=resolve_dtype(self.model_config, self.device))
        self.model, self.tokenizer = model, tokenizer
        self.train_examples = [encode_example(tokenizer, r, r["label"], config.max_length)
                               for r in self.train_rows]
        self.val_examples = [encode_example(tokenizer, r, r["label"], config.max_length)
                             for r in self.val_rows]
        self.lengths = [len(e["input_ids"]) for e in self.train_examples]
        self.loss_module = _loss_module(model, packed=self.packing)
        self.wrapped = self.loss_module
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(self.loss_module,
                               device_ids=[self.device] if on_cuda else None)

        # -- optimizer -------------------------------------------------------------------
        params = list(_trainable(model).values())
        if self.optimizer_kind == "paged_adamw_8bit":
            import bitsandbytes as bnb

            self.optimizer = bnb.optim.PagedAdamW8bit(params, lr=config.learning_rate,
                                                      weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                               weight_decay=config.weight_decay)

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
            "trainable_params": sum(p.numel() for p in params),
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
            "lora": _lora_state(self.model),
            "best_lora": self.best_state, "best_val": self.best_val,
            "best_step": self.best_step, "bad_evals": self.bad_evals,
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"kind": self.config.lr_schedule, "step": self.step,
                         "max_steps": self.max_steps},
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
        _load_lora_state(self.model, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best_state, self.best_val = state["best_lora"], state["best_val"]
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
                    ) -> tuple[Any, int, int]:
        """(mean label-token loss, label tokens, real tokens) of one micro-batch through
        `module` (the loss module or its DDP wrapper), packed or padded."""
        real_tokens = sum(len(e["input_ids"]) for e in examples)
        if self.packing:
            from radproto.model.fast_train import label_positions

            packed = pack_examples(examples)
            positions = label_positions(packed)
            row = packed.to(self.device)
            loss = module(input_ids=row.input_ids, position_ids=row.position_ids,
                          targets=row.targets, cu_seqlens=row.cu_seqlens,
                          positions=positions.to(self.device), max_seqlen=row.max_seqlen)
            return loss, packed.n_label_tokens, real_tokens
        batch = pad_examples(examples, self.tokenizer.pad_token_id)
        n_labels = int((batch["labels"][:, 1:] != -100).sum())
        loss = module(**{k: v.to(self.device) for k, v in batch.items()})
        return loss, n_labels, real_tokens

    def validation_loss(self) -> float:
        """Mean label-token loss over the validation subset (shared out over the ranks)."""
        import torch

        total, count = 0.0, 0
        mine = list(range(len(self.val_examples)))[self.dist.rank::self.dist.world]
        mine.sort(key=lambda i: len(self.val_examples[i]["input_ids"]))
        self.model.eval()
        size = self.config.batch_size * 2
        with torch.no_grad(), self._autocast():
            for start in range(0, len(mine), size):
                examples = [self.val_examples[i] for i in mine[start:start + size]]
                loss, n_labels, _ = self._micro_loss(self.loss_module, examples)
                total += float(loss) * n_labels
                count += n_labels
        self.model.train()
        total, count = _all_sum([total, float(count)], self.dist)
        return total / max(count, 1.0)

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

    def _classifier(self) -> Any:
        """The model in training as a ProtocolClassifier (exact scoring, temperature 1)."""
        from radproto.model.classifier import ProtocolClassifier

        return ProtocolClassifier(self.model, self.tokenizer, self.catalog,
                                  config=self.model_config, cuda_graphs=False,
                                  abstain_threshold=self.config.abstain_threshold)

    def _fit_wall_budget(self) -> None:
        """Lower the training budget so that calibration and saving still fit the wall budget.

        Calibration scores `calib_size` orders over the whole catalog after training; its
        cost is measured here on one order (it varies several-fold between CPUs).
        """
        wall = self.config.wall_budget_minutes * 60
        if wall <= 0:
            return
        start = time.perf_counter()
        self._classifier().catalog_log_probs(_prompt_fields(self.val_rows[:1]))
        per_order = time.perf_counter() - start
        self.model.train()
        calib = min(self.config.calib_size, len(self.val_rows)) if self.config.calibrate else 0
        reserve = 1.15 * calib * per_order + _FINISH_SECONDS
        left = wall - (time.perf_counter() - self.started) - reserve
        left = _all_sum([max(left, 0.0)], self.dist)[0] / self.dist.world  # one budget for all
        budget = self.train_seconds + max(left, 1e-3)  # > 0: a budget of 0 means "none"
        if self.budget_seconds <= 0 or budget < self.budget_seconds:
            log.info("wall budget %.0f s: %.0f s left for training (calibration ~%.0f s)",
                     wall, left, reserve - _FINISH_SECONDS)
            self.budget_seconds = budget

    def _evaluate_and_checkpoint(self) -> bool:
        """Validation loss, best-weights bookkeeping, checkpoint; True = stop early."""
        started = time.perf_counter()
        val = self.validation_loss()
        self.eval_seconds = time.perf_counter() - started
        improved = val < self.best_val - self.config.min_delta
        if improved:
            self.best_val, self.best_step, self.bad_evals = val, self.step, 0
            self.best_state = _lora_state(self.model)
        else:
            self.bad_evals += 1
        self.history.append({"step": self.step, "val_loss": val})
        self.tracker.log_metrics({"val_loss": val, "best_val_loss": self.best_val},
                                 step=self.step)
        log.info("step %d: validation loss %.4f%s", self.step, val,
                 " (best)" if improved else f" (no gain x{self.bad_evals})")
        self._save_checkpoint()
        return self.config.patience > 0 and self.bad_evals >= self.config.patience

    # ------------------------------------------------------------------------ loop
    def run(self) -> str:
        """Train until max_steps, early stopping or the time budget; returns why it stopped."""
        import torch

        config = self.config
        params = list(_trainable(self.model).values())
        self.model.train()
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
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
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
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
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
                    self.train_seconds, self.eval_seconds = _all_max(
                        [self.train_seconds, self.eval_seconds], self.dist)
                budget = self.budget_seconds
                # Stop one mean step early rather than one step late.
                mean_step = (self.train_seconds - self._start_seconds) / max(
                    self.step - self._start_step, 1)
                # ... and leave room for the validation pass that ends training.
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
                if _any_rank(self.stop_requested, self.dist):
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
    def finish(self) -> TrainResult:
        """Best weights back, temperature fitted on the validation subset, model saved,
        validation report, MLflow artifacts and registration (rank 0 only)."""
        from radproto.model.classifier import fit_temperature

        if self.best_state is not None:
            _load_lora_state(self.model, self.best_state)
        if self.packing:  # score with the attention the service uses
            from radproto.model.fast_train import set_attention

            set_attention(self.model, self._attention)
        self.model.eval()
        result = TrainResult(model_dir=None, steps=self.step, stopped=self.stopped,
                             best_val_loss=self.best_val, temperature=1.0,
                             seconds=time.perf_counter() - self.started, run_id=self.run_id,
                             throughput=self.throughput())
        if not self.dist.main:
            return result
        classifier = self._classifier()
        calib_rows = subsample(self.val_rows, self.config.calib_size, self.config.seed + 1)
        val_fields = _prompt_fields(calib_rows)
        labels = np.array([self.catalog.names.index(r["label"]) for r in calib_rows])
        score_start = time.perf_counter()
        # fp32, as the service scores: the temperature must fit the scores it will scale.
        log_probs = classifier.catalog_log_probs(val_fields, batch_size=16)
        score_seconds = time.perf_counter() - score_start
        if self.config.calibrate:
            classifier.temperature = fit_temperature(log_probs, labels)
        result.temperature = classifier.temperature
        metadata = {
            "train": {"steps": self.step, "stopped": self.stopped,
                      "best_step": self.best_step, "best_val_loss": self.best_val,
                      "train_seconds": round(self.train_seconds, 1),
                      "budget_seconds": round(self.budget_seconds, 3),
                      "n_train": len(self.train_examples), "n_val": len(self.val_examples),
                      "lora_layers": self.config.lora_layers, "run_id": self.run_id,
                      "throughput": result.throughput,
                      "calibration": {"method": "temperature scaling",
                                      "fitted_on": f"{len(calib_rows)} validation orders",
                                      "temperature": classifier.temperature}},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        classifier.save(self.out_dir, metadata=metadata)
        (self.out_dir / "train_config.json").write_text(
            json.dumps(self.config.to_dict(), indent=2), "utf-8")
        result.model_dir = self.out_dir

        # -- validation report (the calibration scores: no extra model passes) ----------
        from radproto.training.evaluate import build_report

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
                f"prompt version {PROMPT_VERSION}\n\n"
                + render_prompt({k: "{" + k + "}" for k in ("ordered_exam", "history",
                                                           "diagnosis", "notes")})
                + " {protocol}<eos>\n", "prompt/prompt.txt")
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
                from radproto.training.tracking import register_model

                result.registered_uri = register_model(
                    result.model_uri, self.config.register_name,
                    tracking_uri=self.config.tracking_uri, alias=self.config.alias,
                    run_id=self.run_id)
            self.tracker.end()
        result.seconds = time.perf_counter() - self.started
        return result


def _any_rank(flag: bool, dist_info: Dist) -> bool:
    return bool(_all_sum([1.0 if flag else 0.0], dist_info)[0]) if dist_info.world > 1 \
        else flag


def _install_stop_handlers(trainer: Trainer) -> dict[int, Any]:
    """SIGINT/SIGTERM ask for a stop at the next step boundary (state stays consistent)."""
    import threading

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
        if trainer.dist.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
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


def ensure_default_model(*, tracking_uri: str, catalog: Catalog, work_dir: str | Path,
                         progress: bool = True, stop: threading.Event | None = None) -> str:
    """"models:/radproto@champion" once the registry holds it, training it first if needed
    (the default-cpu preset on the synthetic corpus, generated into work_dir).

    `stop` set (the service is shutting down): training checkpoints after the step it is in
    and raises TrainingInterrupted; the next call resumes from that checkpoint."""
    from radproto.training.tracking import registry_has

    uri = f"models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}"
    if registry_has(uri, tracking_uri=tracking_uri):
        return uri
    work_dir = Path(work_dir)
    corpus_dir = work_dir / "corpus"
    if _split_file(corpus_dir, "train") is None:
        from radproto.training.corpus import write_corpus

        log.info("generating the synthetic corpus in %s", corpus_dir)
        write_corpus(corpus_dir, catalog=catalog)
    config = load_preset(DEFAULT_PRESET).replace(
        data=[str(corpus_dir)], out_dir=str(work_dir / "model"), tracking_uri=tracking_uri,
        register_name=DEFAULT_MODEL_NAME, alias=DEFAULT_ALIAS)
    resume = (work_dir / "model" / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file()

    def stop_when_asked(step: int, trainer: Trainer) -> None:
        if stop is not None and stop.is_set():
            trainer.request_stop()

    result = train(config, catalog, resume=resume, progress=progress, on_step=stop_when_asked)
    return result.registered_uri or uri


def resolve_precision(requested: str, device: str) -> str:
    """ "fp32" or "bf16" for a config's precision ("auto" decides by the hardware)."""
    if requested != "auto":
        return requested
    return "bf16" if device.startswith("cuda") or cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX).

    Elsewhere (e.g. AVX2-only EPYC Milan) bf16 matrix products are emulated and measured
    ~8x slower than fp32, so "auto" must not choose them there.
    """
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
