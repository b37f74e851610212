"""The end of `radproto train`: the best weights back, then calibration, the saved model
directory, the validation report, MLflow artifacts and registration.

    best weights -> scores the service will compute (adapter merged, serving dtype)
    -> blend weight, temperature, abstain threshold (calibration_data, else validation)
    -> model directory -> validation report -> MLflow: artifacts, model, registry, alias
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radproto.training.data import prompt_fields, subsample
from radproto.training.model_setup import load_weights

if TYPE_CHECKING:
    from radproto.training.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `train` returns; model_dir is None on a DDP rank other than 0."""

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
    throughput: dict[str, Any] = field(default_factory=dict)  # see throughput()


def finish(trainer: Trainer) -> TrainResult:
    """Best weights back; the lexical model fitted on the training rows; blend weight,
    temperature and abstain threshold fitted on calibration_data (else the validation
    subset); model saved; validation report; MLflow artifacts and registration (rank 0)."""
    from radproto.training.calibrate import calibrate, labelled_fields
    from radproto.training.metrics import coverage_at
    from radproto.training.report import build_report

    config = trainer.config
    if trainer.best_state is not None:
        load_weights(trainer.loss_module, trainer.best_state)
    if trainer.packing:  # score with the attention the service uses
        from radproto.model.kernels import set_attention

        set_attention(trainer.model, trainer.attention)
    trainer.loss_module.eval()
    result = TrainResult(model_dir=None, steps=trainer.step, stopped=trainer.stopped,
                         best_val_loss=trainer.best_val, temperature=1.0,
                         seconds=time.perf_counter() - trainer.started, run_id=trainer.run_id,
                         throughput=throughput(trainer))
    if not trainer.dist.main:
        return result
    classifier = trainer.classifier()
    classifier.merge_for_cpu()  # calibrate the scores the service will compute
    calib_rows = subsample(trainer.val_rows, trainer.calibration_size(), config.seed + 1)
    labels = np.array([trainer.catalog.names.index(r["label"]) for r in calib_rows])
    score_start = time.perf_counter()
    # in the service's precision: the temperature must fit the scores it will scale
    val_fields = prompt_fields(calib_rows)
    head_log_probs = classifier.head_log_probs(val_fields)
    score_seconds = time.perf_counter() - score_start
    calibration = None
    if config.calibrate and trainer.calibration_rows:
        source = config.calibration_data
        fields, fit_labels = labelled_fields(trainer.calibration_rows, trainer.catalog,
                                             source=source)
        calibration = calibrate(classifier, fields, fit_labels, lexical=trainer.lexical,
                                abstain_accuracy=config.abstain_accuracy,
                                fitted_on=f"{len(fit_labels)} orders of {source}")
    elif config.calibrate:
        calibration = calibrate(classifier, val_fields, labels, lexical=trainer.lexical,
                                abstain_accuracy=config.abstain_accuracy,
                                fitted_on=f"{len(calib_rows)} validation orders",
                                head_log_probs=head_log_probs)
    log_probs = classifier.blend(head_log_probs, val_fields)
    if config.abstain_threshold >= 0:  # a fixed threshold overrides the derived one
        classifier.abstain_threshold = config.abstain_threshold
    elif calibration is None:  # nothing fitted: derived from the validation scores
        probs = classifier.probabilities(log_probs)
        _, classifier.abstain_threshold = coverage_at(
            probs.max(axis=1), probs.argmax(axis=1) == labels,
            config.abstain_accuracy)
    threshold = classifier.abstain_threshold
    result.temperature = classifier.temperature
    metadata = {
        "train": {"steps": trainer.step, "stopped": trainer.stopped,
                  "best_step": trainer.best_step, "best_val_loss": trainer.best_val,
                  "train_seconds": round(trainer.train_seconds, 1),
                  "budget_seconds": round(trainer.budget_seconds, 3),
                  "n_train": len(trainer.train_examples), "n_val": len(trainer.val_examples),
                  "lora_layers": config.lora_layers, "run_id": trainer.run_id,
                  "seed": config.seed, "device": trainer.device,
                  "precision": trainer.precision,
                  "throughput": result.throughput,
                  "calibration": ({"method": "blend weight and temperature scaling",
                                   **calibration.to_dict()} if calibration else
                                  {"method": "none", "temperature": 1.0,
                                   "abstain_threshold": threshold})},
    }
    trainer.out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save(trainer.out_dir, metadata=metadata)
    (trainer.out_dir / "train_config.json").write_text(
        json.dumps(config.to_dict(), indent=2), "utf-8")
    result.model_dir = trainer.out_dir

    # -- validation report (the calibration scores: no extra model passes) ----------
    report_dir = trainer.out_dir / "validation_report"
    metrics = build_report(
        log_probs, labels, trainer.catalog, temperature=classifier.temperature,
        out_dir=report_dir, rows=calib_rows,
        baseline_train=trainer.train_rows if config.baseline else None,
        title="Validation subset (also used for temperature fitting)",
        seconds_per_order=score_seconds / max(len(calib_rows), 1))
    result.metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    trainer.tracker.log_metrics({f"val_{k}": v for k, v in result.metrics.items()},
                             step=trainer.step)
    trainer.tracker.log_metrics({"temperature": classifier.temperature,
                              "train_seconds": trainer.train_seconds}, step=trainer.step)

    # -- MLflow artifacts, model, registry -------------------------------------------
    from radproto.model.prompt import PROMPT_VERSION, render_prompt

    if trainer.tracker.enabled:
        trainer.tracker.log_text(trainer.catalog.to_json(), "catalog/catalog.json")
        trainer.tracker.log_text(
            f"prompt version {PROMPT_VERSION} (the protocol head reads its last token)"
            "\n\n" + render_prompt({k: "{" + k + "}" for k in ("ordered_exam", "history",
                                                               "diagnosis", "notes")})
            + "\n", "prompt/prompt.txt")
        trainer.tracker.log_dict(config.to_dict(), "config/train_config.json")
        trainer.tracker.log_dict({"temperature": classifier.temperature,
                               "abstain_threshold": classifier.abstain_threshold,
                               "fitted_on": len(calib_rows)},
                              "calibration/calibration.json")
        trainer.tracker.log_artifacts(report_dir, "validation_report")
        result.model_uri = trainer.tracker.log_model(trainer.out_dir)
        trainer.tracker.set_tags({"radproto.model_version": classifier.model_version,
                               "radproto.stopped": trainer.stopped})
        if config.register_name:
            result.registered_uri = _register(trainer, classifier, result.model_uri)
        trainer.tracker.end()
    result.seconds = time.perf_counter() - trainer.started
    return result


def _register(trainer: Trainer, classifier: Any, model_uri: str) -> str:
    """A new registry version; the alias moves to it only if it is at least as good as
    the alias's holder on the development set (training/promotion.py) or --force."""
    from radproto.training.promotion import decide
    from radproto.training.tracking import register_model, set_alias

    config = trainer.config
    uri = register_model(model_uri, config.register_name,
                         tracking_uri=config.tracking_uri, run_id=trainer.run_id)
    if not config.alias:
        return uri
    decision = decide(classifier, name=config.register_name, alias=config.alias,
                      tracking_uri=config.tracking_uri, catalog=trainer.catalog,
                      data=config.promotion_data, force=config.force)
    trainer.tracker.set_tags(decision.tags())
    if not decision.promote:
        log.warning("registered %s but %s@%s stays where it is: %s", uri,
                    config.register_name, config.alias, decision.reason)
        return uri
    set_alias(config.register_name, config.alias, uri.rsplit("/", 1)[1],
              tracking_uri=config.tracking_uri)
    log.log(logging.WARNING if config.force else logging.INFO,
            "%s@%s -> %s (%s)", config.register_name, config.alias, uri, decision.reason)
    return f"models:/{config.register_name}@{config.alias}"


def throughput(trainer: Trainer) -> dict[str, Any]:
    """Real (non-padding) training tokens per second of optimizer steps (validation
    excluded), over all ranks, and the peak GPU memory of this process."""
    import torch

    figures: dict[str, Any] = {
        "packing": trainer.packing, "world_size": trainer.dist.world,
        "tokens": trainer.tokens_trained * trainer.dist.world,
        "tokens_per_second": round(trainer.tokens_trained * trainer.dist.world
                                   / max(trainer.step_seconds, 1e-9), 1),
    }
    if trainer.device.startswith("cuda"):
        figures["peak_gpu_memory_gb"] = round(
            torch.cuda.max_memory_allocated(trainer.device) / 1e9, 3)
    return figures
