"""The checkpoint (out_dir/checkpoint/state.pt): what `--resume` needs to end in the same
state as an uninterrupted run.

It holds the LoRA and head weights, the best weights so far, optimizer state, step, data
position, early-stopping state, RNG states (torch, numpy, python, CUDA), the elapsed
training time, the validation history, the MLflow run and the full config.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np

from radproto.model.errors import ModelError
from radproto.training.config import TrainConfig, from_mapping
from radproto.training.model_setup import copy_weights, load_weights

if TYPE_CHECKING:
    from radproto.training.trainer import Trainer

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"


def save_checkpoint(trainer: Trainer) -> None:
    """Write the run's state (rank 0 only), atomically."""
    import torch

    if not trainer.dist.main:
        return
    state = {
        "config": trainer.config.to_dict(),
        "step": trainer.step, "epoch": trainer.epoch, "position": trainer.position,
        "weights": copy_weights(trainer.loss_module),
        "best_weights": trainer.best_state, "best_val": trainer.best_val,
        "best_step": trainer.best_step, "bad_evals": trainer.bad_evals,
        "optimizer": trainer.optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                else None},
        "train_seconds": trainer.train_seconds, "history": trainer.history,
        "run_id": trainer.run_id, "catalog_version": trainer.catalog.version,
    }
    trainer.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    partial = trainer.checkpoint_path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(trainer.checkpoint_path)  # atomic: a crash never leaves half a file


def load_checkpoint(trainer: Trainer) -> None:
    """Restore the run's state into a set-up trainer."""
    import torch

    state = torch.load(trainer.checkpoint_path, map_location="cpu", weights_only=False)
    if state["config"] != trainer.config.to_dict():
        changed = sorted(k for k, v in state["config"].items()
                         if trainer.config.to_dict().get(k) != v)
        log.warning("resuming with a changed config (%s); the checkpoint's holds",
                    ", ".join(changed))
    if state.get("catalog_version") != trainer.catalog.version:
        raise ModelError(f"{trainer.checkpoint_path}: trained on another catalog "
                         f"({state.get('catalog_version')}); start afresh")
    load_weights(trainer.loss_module, state["weights"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.step, trainer.epoch = state["step"], state["epoch"]
    trainer.position = state["position"]
    trainer.best_state, trainer.best_val = state["best_weights"], state["best_val"]
    trainer.best_step, trainer.bad_evals = state["best_step"], state["bad_evals"]
    trainer.train_seconds, trainer.history = state["train_seconds"], state["history"]
    trainer.run_id = state.get("run_id") or ""
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    log.info("resumed at step %d (epoch %d, batch %d)", trainer.step, trainer.epoch,
             trainer.position)


def resume_config(saved: dict[str, Any], given: TrainConfig) -> TrainConfig:
    """The checkpoint's config; only where the model goes and is registered may change."""
    data = dict(saved)
    for key in ("tracking_uri", "register_name", "alias", "out_dir"):
        data[key] = getattr(given, key)
    return from_mapping(data)
