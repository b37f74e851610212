"""The training loop of `radproto train`, read top to bottom: `Trainer.setup()` then
`Trainer.run()`.

    setup:  data -> base model -> LoRA on the top layers -> protocol head -> optimizer
            -> state (fresh or from the checkpoint) -> MLflow run
    run:    per step: lr schedule -> forward/backward over the micro-batches -> optimizer
            -> log -> validation + checkpoint -> stop (max_steps, early stopping, budget,
            a stop signal)

The model's parts are built in training/model_setup.py, the checkpoint in
training/checkpoint.py; training/finish.py calibrates, saves and registers what `run` trained.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.catalog import Catalog
from radproto.model.errors import ModelError
from radproto.training.checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    load_checkpoint,
    save_checkpoint,
)
from radproto.training.config import TrainConfig
from radproto.training.data import (
    encode_rows,
    epoch_batches,
    load_training_data,
    prompt_fields,
    subsample,
)
from radproto.training.distributed import all_max, all_sum, any_rank, init_distributed
from radproto.training.model_setup import (
    build_model,
    build_optimizer,
    copy_weights,
    head_loss_module,
    model_config_for,
    resolve_precision,
)
from radproto.training.packing import pack_examples, pad_examples
from radproto.training.stopping import (
    TrainingInterrupted,
    install_stop_handlers,
    restore_stop_handlers,
)

log = logging.getLogger(__name__)

_FINISH_SECONDS = 45.0  # saving, the validation report's baseline and MLflow logging


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


class Trainer:
    """Holds the run's state; `setup()` builds it, `run()` trains (finish.py does the rest)."""

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
        self.packing = config.packing == "on" or (config.packing == "auto" and on_cuda)

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

        # -- model: base, LoRA, head; the loss module (DDP-wrapped over several processes) -
        self.model_config = model_config_for(config)
        self.model, self.tokenizer, self.head, self.attention = build_model(
            config, self.model_config, self.catalog, self.device,
            grad_ckpt=self.grad_ckpt, packing=self.packing, world=self.dist.world)
        self.train_examples = encode_rows(self.tokenizer, self.train_rows, self.catalog,
                                          config.max_length)
        self.val_examples = encode_rows(self.tokenizer, self.val_rows, self.catalog,
                                        config.max_length)
        self.lengths = [len(e["input_ids"]) for e in self.train_examples]
        self.loss_module = head_loss_module(self.model, self.head,
                                            label_smoothing=config.label_smoothing)
        self.wrapped = self.loss_module
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(self.loss_module,
                               device_ids=[self.device] if on_cuda else None)

        # -- optimizer: LoRA and the head; the number of steps ---------------------------
        self.optimizer, self._lr_scale, self.params = build_optimizer(
            self.loss_module, self.head, config, self.optimizer_kind)

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
            load_checkpoint(self)
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
        previous = install_stop_handlers(self)
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
                        save_checkpoint(self)
                    raise TrainingInterrupted(f"stopped at step {self.step}; resume with "
                                              f"--resume (checkpoint {self.checkpoint_path})")
        finally:
            restore_stop_handlers(previous)
            if bar is not None:
                bar.close()
        self.stopped = stopped
        log.info("training stopped (%s) at step %d after %.0f s; best validation loss %.4f "
                 "at step %d", stopped, self.step, self.train_seconds, self.best_val,
                 self.best_step)
        return stopped

    # ------------------------------------------------------------------------ pieces
    def _autocast(self) -> Any:
        import torch

        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)

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
        calib = (self.calibration_size() + len(self.calibration_rows)
                 if self.config.calibrate else 0)
        reserve = 1.15 * calib * per_order + _FINISH_SECONDS
        left = wall - (time.perf_counter() - self.started) - reserve
        left = all_sum([max(left, 0.0)], self.dist)[0] / self.dist.world  # one budget for all
        budget = self.train_seconds + max(left, 1e-3)  # > 0: a budget of 0 means "none"
        if self.budget_seconds <= 0 or budget < self.budget_seconds:
            log.info("wall budget %.0f s: %.0f s left for training (calibration ~%.0f s)",
                     wall, left, reserve - _FINISH_SECONDS)
            self.budget_seconds = budget

    def calibration_size(self) -> int:
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
            self.best_state = copy_weights(self.loss_module)
        else:
            self.bad_evals += 1
        self.history.append({"step": self.step, "val_loss": val, "val_top1": accuracy})
        self.tracker.log_metrics({"val_loss": val, "best_val_loss": self.best_val,
                                  "val_top1": accuracy}, step=self.step)
        log.info("step %d: validation loss %.4f, top-1 %.3f%s", self.step, val, accuracy,
                 " (best)" if improved else f" (no gain x{self.bad_evals})")
        save_checkpoint(self)
        return self.config.patience > 0 and self.bad_evals >= self.config.patience
