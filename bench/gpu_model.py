"""A Llama-2-7B-shaped causal LM with random weights, quantized to NF4 in memory.

No 7B weights can be downloaded where the benchmark runs; speed and memory depend on the
shape, not on the values. The model is initialised directly on the device in bf16 and each
decoder linear layer is replaced by a bitsandbytes Linear4bit (NF4, double quantization,
bf16 compute), which is what `from_pretrained(..., BitsAndBytesConfig(...))` builds.
"""

from __future__ import annotations

import time
from typing import Any

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                 max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=32000, max_position_embeddings=512,
            rms_norm_eps=1e-5)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_config(tiny: bool = False, **overrides: Any) -> Any:
    from transformers import LlamaConfig

    shape = dict(TINY if tiny else LLAMA2_7B)
    shape.update(overrides)
    return LlamaConfig(**shape, attn_implementation="sdpa", tie_word_embeddings=False)


def quantize_linears(model: Any, device: Any, compute_dtype: Any) -> int:
    """Replace the decoder's nn.Linear layers by NF4 Linear4bit layers, one at a time."""
    import bitsandbytes as bnb
    import torch

    count = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LINEAR_NAMES:
                linear = getattr(parent, name, None)
                if not isinstance(linear, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                      compute_dtype=compute_dtype, compress_statistics=True,
                                      quant_type="nf4", device="meta")
                weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False,
                                           quant_type="nf4", compress_statistics=True,
                                           module=q)
                q.weight = weight._quantize(device) if not weight.bnb_quantized else weight
                setattr(parent, name, q)
                del linear
                count += 1
    return count


def random_llama(config: Any, *, device: str, dtype: Any, seed: int = 0) -> Any:
    """A LlamaForCausalLM of `config` with random weights, made directly on `device` in
    `dtype` (no float32 copy on the host first)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)


def build_model(*, tiny: bool = False, device: str = "cuda", seed: int = 0,
                quantize: bool = True, compute_dtype: Any = None) -> tuple[Any, dict[str, Any]]:
    """The random model on `device` (NF4 unless quantize=False) and how it was built."""
    import torch

    if compute_dtype is None:
        compute_dtype = torch.bfloat16
    config = llama_config(tiny)
    start = time.perf_counter()
    model = random_llama(config, device=device, dtype=compute_dtype, seed=seed)
    built = time.perf_counter() - start
    quantized = 0
    if quantize:
        quantized = quantize_linears(model, torch.device(device), compute_dtype)
        model.is_loaded_in_4bit = True
        model.quantization_method = "bitsandbytes"  # the HF Trainer must not .to() it
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    model.config.pad_token_id = 0
    model.eval()
    info = {
        "shape": {k: getattr(config, k) for k in LLAMA2_7B},
        "n_params": sum(p.numel() for p in model.parameters()),
        "build_s": round(built, 2),
        "quantize_s": round(time.perf_counter() - start - built, 2),
        "quantized_linears": quantized,
        "weight_bytes": model_bytes(model),
    }
    return model, info


def model_bytes(model: Any) -> int:
    """Bytes held by parameters and buffers (NF4 packed weights count as stored)."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:  # absmax (and its nested quantization) per block
            for part in (state.absmax, getattr(state.state2, "absmax", None) if state.nested
                         else None, getattr(state, "offset", None)):
                if part is not None and hasattr(part, "numel"):
                    total += part.numel() * part.element_size()
    return total
