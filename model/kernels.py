"""Faster kernels for a Llama-family model with LoRA, used by training and serving alike.

- `varlen_attention_forward`: attention over a packed row (many examples, no padding),
  bounded per example by `cu_seqlens` (flash-attention varlen on CUDA, one causal SDPA call
  per example elsewhere); registered as the attention implementation "radproto_varlen";
- `lean_lora`: LoRA matmuls in the compute dtype, the add fused into the GEMM (peft upcasts
  activations to the adapter's float32 and adds separately);
- `fold_lora`: for large inference batches on a 4-bit base, the LoRA delta added to the
  weight bitsandbytes dequantises anyway (a fixed cost per call, not two GEMMs per token);
- (model/marlin.py attaches an int4 copy of the folded weight that small inference calls
  take: the Marlin GEMM for the lone order);
- `cast_frozen_floats`: norms, embeddings and head kept in bf16 instead of the float32
  that prepare_model_for_kbit_training casts them to;
- `compile_elementwise`: torch.compile'd RMSNorm, RoPE and SwiGLU (one fused kernel each).
"""

from __future__ import annotations

import inspect
import itertools
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

VARLEN_ATTENTION = "radproto_varlen"


def _varlen_kernel() -> tuple[Callable | None, dict[str, Any]]:
    """torch's flash-attention varlen entry point and the keyword that makes it causal."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, {}
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        return varlen_attn, {"is_causal": True}
    if "window_size" in params:
        return varlen_attn, {"window_size": (-1, 0)}
    return None, {}


_VARLEN, _CAUSAL_KW = None, {}
_VARLEN_CHECKED = False
FORCE_SEGMENT_LOOP = False  # tests and benchmarks flip this to check the kernel path
USE_BLOCK_MASK = False  # tests: the CUDA fallback (one SDPA call, block-diagonal mask) on CPU


def varlen_attention_forward(module: Any, query: Any, key: Any, value: Any,
                             attention_mask: Any, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention inside each packed example ([1, H, T, D] in, [1, T, H, D] out)."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    global _VARLEN, _CAUSAL_KW, _VARLEN_CHECKED
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # not a packed call (e.g. generation): the plain path
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one packed row")
    groups = getattr(module, "num_key_value_groups", 1)
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    if not _VARLEN_CHECKED:
        _VARLEN, _CAUSAL_KW = _varlen_kernel()
        _VARLEN_CHECKED = True
    use_kernel = (_VARLEN is not None and q.is_cuda and not FORCE_SEGMENT_LOOP
                  and q.dtype in (torch.bfloat16, torch.float16))
    if use_kernel:
        max_len = int(kwargs.get("max_length_q") or 0)
        out = _VARLEN(q, k, v, cu, cu, max_len, max_len, scale=scaling, **_CAUSAL_KW)
    elif (q.is_cuda or USE_BLOCK_MASK) and not FORCE_SEGMENT_LOOP:
        # no varlen kernel: one SDPA call with a block-diagonal causal mask
        n = q.shape[0]
        segment = torch.repeat_interleave(
            torch.arange(cu.numel() - 1, device=q.device), (cu[1:] - cu[:-1]).long(),
            output_size=n)
        index = torch.arange(n, device=q.device)
        mask = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            attn_mask=mask[None, None], scale=scaling)[0].transpose(0, 1)
    else:
        bounds = cu.tolist()
        out = torch.empty_like(q)
        for start, end in itertools.pairwise(bounds):
            seg = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), k[start:end].transpose(0, 1),
                v[start:end].transpose(0, 1), is_causal=True, scale=scaling)
            out[start:end] = seg.transpose(0, 1)
    return out.unsqueeze(0), None


def register_varlen_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)


def set_attention(model: Any, implementation: str) -> str:
    """Switch the attention implementation of every config in the model; returns the old one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    old = base.config._attn_implementation
    for module in base.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = implementation
    return old


def cast_frozen_floats(model: Any, dtype: Any) -> int:
    """Cast frozen floating parameters (norms, embeddings, head) to `dtype`; LoRA stays."""
    count = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            count += 1
    return count


def _lean_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """peft's LoRA forward minus the float32 round trip: the adapter runs in x's dtype."""
    import torch.nn.functional as F

    if self.disable_adapters or self.merged:
        return self._radproto_plain_forward(x, *args, **kwargs)
    import torch

    if "_radproto_held_weight" in self.__dict__ and not torch.is_grad_enabled():
        return _folded_forward(self, x)  # held_folded_weights: built once for many calls
    int4 = self.__dict__.get("_radproto_int4")  # model/marlin.py: the folded weight, int4
    if (int4 is not None and not self.training and not torch.is_grad_enabled()
            and x.numel() <= self.__dict__["_radproto_int4_tokens"] * x.shape[-1]):
        out = int4(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        bias = self.base_layer.bias
        return out if bias is None else out + bias.to(out.dtype)
    fold_tokens = self.__dict__.get("_radproto_fold_tokens", 0)
    if (fold_tokens and not self.training and not torch.is_grad_enabled()
            and x.numel() >= fold_tokens * x.shape[-1]):
        return _folded_forward(self, x)
    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a = self.lora_A[name].weight
        b = self.lora_B[name].weight
        hidden = F.linear(self.lora_dropout[name](x), a.to(x.dtype))
        # one GEMM that also adds: result + scale * hidden @ B^T (no separate add kernel)
        flat = torch.addmm(result.reshape(-1, result.shape[-1]),
                           hidden.reshape(-1, hidden.shape[-1]), b.to(x.dtype).t(),
                           alpha=self.scaling[name])
        result = flat.view(result.shape)
    return result


def _dequantized_4bit(layer: Any) -> Any:
    """The weight of a bitsandbytes 4-bit layer, dequantised."""
    import bitsandbytes.functional as bnbf

    state = layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        return _dequantized_cpu_packed(layer.weight.data, state)
    return bnbf.dequantize_4bit(layer.weight.data, state)


def _dequantized_cpu_packed(packed: Any, state: Any, block_n: int = 32) -> Any:
    """On a CPU with AVX-512 BF16, bitsandbytes repacks a 4-bit weight in place at its first
    inference forward (for its own kernels: [N, K/2] bytes in blocks of 32 rows, absmax as
    [K / blocksize, N] bfloat16), and dequantize_4bit no longer reads it. The same layout
    undone here (the inverse bitsandbytes ships re-quantises absmax and changes the layer)."""
    import torch

    n, k = packed.shape[0], packed.shape[1] * 2
    pairs = packed.reshape(-1, block_n)
    codes = torch.cat([pairs & 0xF, pairs >> 4], dim=-1)  # the low nibbles, then the high
    codes = codes.reshape(n // block_n, k // 2, block_n, 2).transpose(1, 2).reshape(n, k)
    values = state.code.to(packed.device)[codes.long()]
    absmax = state.absmax.float().T.reshape(n, k // state.blocksize, 1)
    return (values.reshape(n, k // state.blocksize, state.blocksize) * absmax).reshape(n, k)


def _folded_forward(self: Any, x: Any) -> Any:
    """x @ (W + scale * B @ A)^T with W dequantised once: bitsandbytes dequantises W for every
    call of more than one token anyway, so the adapter costs one rank-r GEMM per call instead
    of two skinny GEMMs over every token. With model/fp8.py's FP8 GEMM attached, the folded
    weight and x are cast to e4m3 and multiplied on the FP8 tensor cores. Inside
    `held_folded_weights` the weight built on entry serves every call."""
    import torch.nn.functional as F

    fp8 = self.__dict__.get("_radproto_fp8")
    held = self.__dict__.get("_radproto_held_weight")
    if fp8 is not None:
        out = fp8(x, self, held)
    else:
        out = F.linear(x, held if held is not None else folded_weight(self, x.dtype))
    bias = self.base_layer.bias
    return out if bias is None else out + bias.to(out.dtype)


def folded_weight(layer: Any, dtype: Any = None) -> Any:
    """A LoRA layer's effective weight [N, K] in `dtype` (float32 by default), a new tensor:
    its base (a bitsandbytes 4-bit weight dequantised, or a plain one) plus scale * B @ A of
    every active adapter, added in that dtype."""
    import torch

    dtype = dtype or torch.float32
    base = layer.base_layer
    if _is_4bit(base):  # dequantising makes a new tensor: no copy on top
        weight = _dequantized_4bit(base).to(dtype)
    else:
        weight = base.weight.to(dtype, copy=True)
    for name in layer.active_adapters:
        if name in layer.lora_A:
            weight.addmm_(layer.lora_B[name].weight.to(dtype), layer.lora_A[name].weight.to(dtype),
                          alpha=layer.scaling[name])
    return weight


@contextmanager
def held_folded_weights(module: Any, dtype: Any) -> Iterator[int]:
    """Build the folded weight (FP8 where model/fp8.py is attached, else `dtype`) of every
    folded LoRA layer inside `module` once; within the block each of their inference calls
    uses it, whatever its size, instead of dequantising and folding again. For a burst run
    layer by layer (scoring.layer_major_hidden_states): one decoder layer's weights held
    while all of the burst's batches pass through it. Yields how many layers."""
    layers = [m for m in lean_4bit_layers(module) if m.__dict__.get("_radproto_fold_tokens")]
    for layer in layers:
        fp8 = layer.__dict__.get("_radproto_fp8")
        layer._radproto_held_weight = (fp8.weight8(layer) if fp8 is not None
                                       else folded_weight(layer, dtype))
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("_radproto_held_weight", None)


def fold_lora(model: Any, min_tokens: int) -> int:
    """Score calls of at least `min_tokens` tokens with the LoRA delta folded into the
    dequantised 4-bit weight (inference only; 0 turns it off). Applies to layers lean_lora
    patched over a bitsandbytes 4-bit base; returns how many."""
    layers = lean_4bit_layers(model)
    for module in layers:
        module._radproto_fold_tokens = int(min_tokens)
    return len(layers)


def lean_4bit_layers(model: Any) -> list[Any]:
    """The LoRA layers lean_lora patched over a bitsandbytes 4-bit base: those fold_lora and
    model/marlin.py give their inference shortcuts."""
    return [m for m in model.modules() if hasattr(m, "_radproto_plain_forward")
            and _is_4bit(getattr(m, "base_layer", None))]


def _is_4bit(layer: Any) -> bool:
    return getattr(getattr(layer, "weight", None), "quant_state", None) is not None


def lean_lora(model: Any) -> int:
    """Give every plain LoRA layer (no DoRA, no bias) the lean forward; returns how many."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or hasattr(module, "_radproto_plain_forward"):
            continue
        if any(getattr(module, "use_dora", {}).values()) or not hasattr(module, "lora_A"):
            continue
        module._radproto_plain_forward = module.forward
        module.forward = types.MethodType(_lean_lora_forward, module)
        count += 1
    return count


def plain_lora(model: Any) -> int:
    """Undo lean_lora: peft's own forward again; returns how many layers."""
    count = 0
    for module in model.modules():
        if hasattr(module, "_radproto_plain_forward"):
            del module.forward
            del module._radproto_plain_forward
            for key in ("_radproto_fold_tokens", "_radproto_int4", "_radproto_int4_tokens",
                        "_radproto_fp8", "_radproto_held_weight"):
                module.__dict__.pop(key, None)
            count += 1
    return count


def compile_elementwise(model: Any) -> int:
    """torch.compile RMSNorm, SwiGLU and RoPE into fused kernels (Llama-family modules)."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama

    @torch.compile(dynamic=True)
    def rms_norm(hidden: Any, weight: Any, eps: float) -> Any:
        dtype = hidden.dtype
        h = hidden.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(dtype)

    @torch.compile(dynamic=True)
    def swiglu(gate: Any, up: Any) -> Any:
        return F.silu(gate) * up

    def norm_forward(self: Any, hidden: Any) -> Any:
        return rms_norm(hidden, self.weight, self.variance_epsilon)

    def mlp_forward(self: Any, x: Any) -> Any:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))

    count = 0
    for module in model.modules():
        if "forward" in vars(module):
            continue  # already patched
        if isinstance(module, modeling_llama.LlamaRMSNorm):
            module.forward = types.MethodType(norm_forward, module)
            count += 1
        elif isinstance(module, modeling_llama.LlamaMLP) and module.config.hidden_act == "silu":
            module.forward = types.MethodType(mlp_forward, module)
            count += 1
    if not hasattr(modeling_llama, "_radproto_rope"):
        modeling_llama._radproto_rope = modeling_llama.apply_rotary_pos_emb
        modeling_llama.apply_rotary_pos_emb = torch.compile(
            modeling_llama._radproto_rope, dynamic=True)
    return count


def uncompile_elementwise(model: Any) -> None:
    """Undo compile_elementwise: the modules' own forwards and the original RoPE."""
    from transformers.models.llama import modeling_llama

    for module in model.modules():
        if isinstance(module, modeling_llama.LlamaRMSNorm | modeling_llama.LlamaMLP) \
                and "forward" in vars(module):
            del module.forward
    original = getattr(modeling_llama, "_radproto_rope", None)
    if original is not None:
        modeling_llama.apply_rotary_pos_emb = original
        del modeling_llama._radproto_rope
