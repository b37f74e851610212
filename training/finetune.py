"""`radproto train`: LoRA / QLoRA fine-tuning of the model and its protocol head.

    train():  Trainer.setup() -> Trainer.run() -> finish()

    training/trainer.py      the loop, read top to bottom (setup, then one step after another)
    training/model_setup.py  base model, LoRA, head, loss module, optimizer
    training/data.py         the order files, tokenized, in (length-grouped) batches
    training/packing.py      micro-batches as padded batches or packed rows
    training/distributed.py  several processes under torchrun (DDP)
    training/checkpoint.py   what `--resume` restores
    training/stopping.py     SIGINT / SIGTERM stop at a step boundary
    training/finish.py       best weights -> calibration -> save -> report -> MLflow

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
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radproto.model.catalog import Catalog
from radproto.model.errors import ConfigError
from radproto.training.checkpoint import resume_config
from radproto.training.config import TrainConfig, apply_overrides, load_config, load_preset
from radproto.training.distributed import shutdown
from radproto.training.finish import TrainResult, finish
from radproto.training.stopping import TrainingInterrupted
from radproto.training.trainer import Trainer

log = logging.getLogger(__name__)

DEFAULT_PRESET = "default"


def train(config: TrainConfig, catalog: Catalog, *, resume: bool = False,
          progress: bool = True,
          on_step: Callable[[int, Trainer], None] | None = None) -> TrainResult:
    """Train, calibrate, save to config.out_dir, log to MLflow, register if configured."""
    if config.calibrate and config.calibration_data and \
            not Path(config.calibration_data).is_file():
        # found out now, not after the training run
        raise ConfigError(f"calibration_data '{config.calibration_data}' is not a file (the "
                          "default preset fits on eval/calib.jsonl of a radproto checkout; "
                          "give another labelled order file or --set calibration_data=)",
                          field="calibration_data")
    trainer = Trainer(config, catalog, resume=resume, progress=progress, on_step=on_step)
    if resume and trainer.checkpoint_path.is_file():
        import torch

        saved = torch.load(trainer.checkpoint_path, map_location="cpu", weights_only=False)
        trainer.config = config = resume_config(saved["config"], config)
    trainer.setup()
    try:
        trainer.run()
        result = finish(trainer)
    finally:
        shutdown(trainer.dist)
    if result.model_dir is not None:
        log.info("model saved to %s (temperature %.3f)%s", result.model_dir,
                 result.temperature,
                 f"; registered as {result.registered_uri}" if result.registered_uri else "")
    return result


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
