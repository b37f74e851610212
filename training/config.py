"""The training configuration: one dataclass, loaded from YAML presets and `--set` overrides.

Every field documents itself (`field(metadata={"help": ...})`); `__post_init__` validates the
values. A YAML file with an unknown or bad field raises `ConfigError` naming the file, the
line and the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from radproto.model.errors import ConfigError
from radproto.model.loading import DEFAULT_LORA_TARGETS

PRESET_PREFIX = "preset_"


def _f(default: Any, help_text: str) -> Any:
    """A scalar field with its help text."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Everything one `radproto train` run needs; saved in full in every checkpoint."""

    # -- model ---------------------------------------------------------------------------
    base_model: str = _f("embedded:smollm2", "base causal LM: embedded:smollm2, a directory "
                         "or a hub id (e.g. epfl-llm/meditron-7b)")
    quantization: str = _f("auto", "auto (NF4 on CUDA, none on CPU), none or nf4")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA input")
    lora_targets: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),  # the model's one list
        metadata={"help": "linear layers that get LoRA"})
    lora_layers: int = _f(0, "LoRA on the top N decoder layers only (0 = all); the frozen "
                          "layers below need no backward pass")
    start_from: str = _f("", "a trained model directory (or 'default', the shipped model) whose "
                         "LoRA adapter and protocol head this run starts from instead of fresh "
                         "ones, e.g. to fine-tune the shipped model on a site's history; its "
                         "base model, LoRA rank, alpha, targets and layers must be this run's")
    max_length: int = _f(256, "longest example in tokens (prompt cut to fit)")
    precision: str = _f("auto", "auto (bf16 autocast on CUDA and on CPUs with native bf16, "
                                "else fp32), fp32 or bf16")
    gradient_checkpointing: str = _f("auto", "auto (on for CUDA), on or off")
    packing: str = _f("auto", "auto (on for CUDA), on or off: each micro-batch as one row "
                      "without padding (attention bounded per example), frozen weights in the "
                      "compute dtype and LoRA without float32 round trips; same examples, "
                      "same loss")
    cache_dir: str = _f("", "where the dequantized embedded model is cached "
                        "(default ~/.cache/radproto)")
    # -- data ----------------------------------------------------------------------------
    data: list[str] = field(default_factory=list, metadata={
        "help": "corpus directories (train/validation splits) and/or order files "
                "(a site history; split by val_fraction)"})
    val_fraction: float = _f(0.1, "share of an order file held out for validation")
    val_size: int = _f(300, "validation orders used for early stopping and calibration "
                       "(a fixed random subset; 0 = all)")
    calib_size: int = _f(0, "validation orders scored for temperature fitting, the abstain "
                         "threshold and the validation report (0 = all of val_size)")
    group_by_length: bool = _f(True, "batch examples of similar length (less padding)")
    # -- optimization --------------------------------------------------------------------
    learning_rate: float = _f(2e-4, "peak learning rate")
    lr_schedule: str = _f("cosine", "cosine, linear or constant (after warmup)")
    warmup_steps: int = _f(20, "linear warmup steps")
    min_lr_ratio: float = _f(0.1, "final learning rate as a share of the peak")
    head_learning_rate: float = _f(0.0, "peak learning rate of the protocol head "
                                   "(0 = learning_rate)")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy over the catalog")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")
    optimizer: str = _f("auto", "auto (paged_adamw_8bit on CUDA, adamw on CPU), adamw or "
                        "paged_adamw_8bit")
    epochs: float = _f(1.0, "passes over the training data")
    max_steps: int = _f(0, "optimizer steps (0 = from epochs)")
    batch_size: int = _f(16, "examples per micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    time_budget_minutes: float = _f(0.0, "stop training after this much wall time; the lr "
                                    "schedule follows the larger of step and time progress "
                                    "(0 = off)")
    wall_budget_minutes: float = _f(0.0, "the whole command (load, training, calibration, "
                                    "saving) ends within this: training gets what is left "
                                    "after the measured cost of calibration (0 = off)")
    seed: int = _f(13, "random seed (LoRA init, data order, dropout)")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default)")
    # -- evaluation, checkpoints, early stopping -----------------------------------------
    eval_interval: int = _f(50, "optimizer steps between validation + checkpoint")
    patience: int = _f(3, "evaluations without improvement before stopping (0 = never)")
    min_delta: float = _f(0.001, "smallest validation-loss drop that counts as improvement")
    log_interval: int = _f(10, "optimizer steps between metric logs")
    calibrate: bool = _f(True, "fit the temperature (and the lexical weight) after training, "
                         "on calibration_data or else the validation subset")
    calibration_data: str = _f("", "labelled orders that read like the service's (e.g. "
                               "eval/calib.jsonl, a site's held-out history) to fit the blend, "
                               "temperature and abstain threshold on ('' = the validation "
                               "subset)")
    lexical: bool = _f(True, "blend the protocol head with a TF-IDF + logistic-regression "
                       "model trained on the same rows (its weight fitted in calibration)")
    abstain_threshold: float = _f(-1.0, "calibrated confidence below which a suggestion "
                                  "goes to the radiologist; -1 = the lowest threshold at which "
                                  "the calibrated validation orders reach abstain_accuracy")
    abstain_accuracy: float = _f(0.95, "the accuracy the derived abstain threshold aims for")
    # -- output and tracking -------------------------------------------------------------
    out_dir: str = _f("runs/radproto", "model directory (checkpoints in out_dir/checkpoint)")
    tracking_uri: str = _f("sqlite:///mlflow.db", "MLflow tracking URI ('' = no tracking)")
    experiment: str = _f("radproto", "MLflow experiment name")
    register_name: str = _f("", "register the model under this name ('' = do not)")
    alias: str = _f("", "move this alias (e.g. champion) to the registered version, if it is "
                    "at least as good as the alias's holder on promotion_data")
    promotion_data: str = _f("eval/dev.jsonl", "labelled orders on which a new model must "
                             "match the alias's holder to take the alias")
    force: bool = _f(False, "move the alias even if the new model is worse (logged)")
    baseline: bool = _f(True, "train the TF-IDF + logistic-regression yardstick for the "
                        "validation report")

    def __post_init__(self) -> None:
        choices = {
            "quantization": ("auto", "none", "nf4"),
            "precision": ("auto", "fp32", "bf16"),
            "gradient_checkpointing": ("auto", "on", "off"),
            "packing": ("auto", "on", "off"),
            "lr_schedule": ("cosine", "linear", "constant"),
            "optimizer": ("auto", "adamw", "paged_adamw_8bit"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"must be one of {', '.join(allowed)}, not "
                                  f"'{getattr(self, name)}'", field=name)
        positive = ("lora_r", "lora_alpha", "batch_size", "grad_accum", "eval_interval",
                    "log_interval", "learning_rate")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError("must be positive", field=name)
        non_negative = ("lora_layers", "warmup_steps", "weight_decay", "max_grad_norm",
                        "head_learning_rate",
                        "max_steps", "val_size", "calib_size", "patience", "min_delta",
                        "time_budget_minutes", "wall_budget_minutes", "threads",
                        "epochs")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError("must not be negative", field=name)
        if self.max_length < 64:
            raise ConfigError("must be at least 64", field="max_length")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("must be in [0, 1)", field="lora_dropout")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("must be in (0, 1)", field="val_fraction")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("must be in [0, 1]", field="min_lr_ratio")
        if not (0.0 <= self.abstain_threshold <= 1.0 or self.abstain_threshold == -1.0):
            raise ConfigError("must be in [0, 1], or -1 (derived from validation)",
                              field="abstain_threshold")
        if not 0.0 < self.abstain_accuracy <= 1.0:
            raise ConfigError("must be in (0, 1]", field="abstain_accuracy")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("must be in [0, 1)", field="label_smoothing")
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("either epochs or max_steps must be set", field="max_steps")
        if not self.lora_targets:
            raise ConfigError("at least one target layer is needed", field="lora_targets")
        if self.alias and not self.register_name:
            raise ConfigError("an alias needs register_name", field="alias")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        data = self.to_dict()
        data.update(changes)
        return from_mapping(data)


# ---------------------------------------------------------------------------- loading
def field_help() -> dict[str, str]:
    """Field name -> help text (for `radproto train --help` style listings)."""
    return {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """value as the field's type; ConfigError(field=name) when it cannot be."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"must be a list, not {type(value).__name__}", field=name)
        return [_coerce(name, v, typing.get_args(kind)[0]) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false",
                                                       "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"must be true or false, not {value!r}", field=name)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise ConfigError(f"must be an integer, not {value!r}", field=name)
        try:
            number = float(value)
        except ValueError as exc:
            raise ConfigError(f"must be an integer, not {value!r}", field=name) from exc
        if not number.is_integer():
            raise ConfigError(f"must be an integer, not {value!r}", field=name)
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"must be a number, not {value!r}", field=name)
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"must be a number, not {value!r}", field=name) from exc
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, bool):  # YAML 1.1 reads the on/off of auto|on|off as booleans
            return "on" if value else "off"
        if isinstance(value, dict | list):
            raise ConfigError(f"must be text, not {type(value).__name__}", field=name)
        return str(value)
    if isinstance(kind, types.UnionType):  # pragma: no cover - no union fields today
        return value
    return value


def from_mapping(data: Mapping[str, Any], *, path: str = "",
                 lines: Mapping[str, int] | None = None) -> TrainConfig:
    """A validated config from a mapping; unknown or bad fields raise ConfigError."""
    kinds = _field_types()
    lines = lines or {}
    values: dict[str, Any] = {}
    for name, value in data.items():
        line = lines.get(name)
        if name not in kinds:
            raise ConfigError("unknown field", path=path, line=line, field=str(name))
        try:
            values[name] = _coerce(name, value, kinds[name])
        except ConfigError as exc:
            raise ConfigError(exc.reason, path=path, line=line, field=name) from None
    try:
        return TrainConfig(**values)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=path, line=lines.get(exc.field),
                          field=exc.field) from None


def load_config(path: str | Path) -> TrainConfig:
    """A config from a YAML file (fields not named keep their defaults)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    return _from_yaml(text, str(path))


def _from_yaml(text: str, source: str) -> TrainConfig:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError.from_yaml(exc, path=source) from None
    if data is None:
        return TrainConfig()
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError("must be a mapping of field: value", path=source, line=1)
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    return from_mapping(data, path=source, lines=lines)


def preset_names() -> list[str]:
    root = resources.files("radproto.training")
    return sorted(p.name[len(PRESET_PREFIX):-len(".yaml")] for p in root.iterdir()
                  if p.name.startswith(PRESET_PREFIX) and p.name.endswith(".yaml"))


def load_preset(name: str) -> TrainConfig:
    """A named preset shipped with the package (training/preset_<name>.yaml)."""
    filename = f"{PRESET_PREFIX}{name}.yaml"
    resource = resources.files("radproto.training").joinpath(filename)
    if not resource.is_file():
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(preset_names())})",
                          field="preset")
    return _from_yaml(resource.read_text("utf-8"), f"<preset {name}>")


def apply_overrides(config: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """`key=value` strings (the value read as YAML: 2e-3, true, [a, b]) applied in order."""
    data = config.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, not '{item}'", path="--set")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        data[key] = value
    return from_mapping(data, path="--set")
