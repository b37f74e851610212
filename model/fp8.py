"""FP8 GEMMs for bursts on CUDA: the folded 4-bit weight cast to e4m3 each call.

A burst (thousands of tokens a call) is compute-bound: bitsandbytes' path (dequantise the
NF4 weight to bf16, then a bf16 GEMM) runs within 5% of uncompressed bf16 on an H100, and
bf16 itself tops out below 600 orders/s on a 7B (bench/GPU_NOTES.md run 21). Hopper's FP8
tensor cores do twice the bf16 rate. So a call that takes the folded path
(kernels.fold_lora: at least `fold_lora_tokens` tokens) may run its GEMM in FP8: the folded
weight W + scale * B @ A is cast to e4m3 with one scale per tensor, fixed at start from the
folded weight's largest magnitude, and the activations with one scale per token, so an
order's answer does not depend on the orders batched with it. No copy of the weights is
kept: like bitsandbytes' dequantisation the cast happens per call, and memory stays what
the NF4 model holds.

The weight side is bitsandbytes' dequantisation, the fold (kernels.folded_weight) and one
compiled cast: ~45 ms of a 7B forward at 8,192 tokens against the FP8 GEMMs' ~80 (bench/
GPU_NOTES.md run 23). A Triton kernel that read the NF4 bytes once and wrote e4m3 directly
was slower on the card (run 24) and is gone.

The rounding, measured on the shipped model (bench/quant_accuracy.py, every decoder linear
layer, the calibration set): head top-1 92.8% against 93.4%, the same top-1 for 99.4% of
orders; the blend 94.4% either way.

Opt-in (setting `fp8_burst`); needs a card with FP8 tensor cores (compute capability 8.9 or
later: Ada, Hopper); elsewhere it warns and changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn


class Fp8Gemm:
    """x @ W^T in FP8 for one folded LoRA layer: W's scale fixed at start, x's per token."""

    def __init__(self, layer: Any, *, compile_casts: bool = True) -> None:
        import torch

        from radproto.model.kernels import folded_weight

        # the dtype each call rebuilds the folded weight in (bitsandbytes' compute dtype)
        self.dtype = getattr(layer.base_layer, "compute_dtype", None) or torch.bfloat16
        with torch.no_grad():
            folded = folded_weight(layer, self.dtype)
            amax = folded.abs().amax().float().clamp(min=1e-12)
        n = folded.shape[0]
        del folded
        self.scale = amax / E4M3_MAX  # 0-dim float32 on the weight's device
        self.inv_scale = 1.0 / self.scale
        # _scaled_mm's row-wise form wants one weight scale per output: the same value
        self.scale_rows = self.scale.expand(1, n).contiguous()
        self._cast_weight = _cast_weight_compiled if compile_casts else _cast_weight
        self._cast_rows = _cast_rows_compiled if compile_casts else _cast_rows

    def weight8(self, layer: Any) -> Any:
        """The folded weight [N, K] in e4m3, divided by the scale."""
        from radproto.model.kernels import folded_weight

        return self._cast_weight(folded_weight(layer, self.dtype), self.inv_scale)

    def __call__(self, x: Any, layer: Any, weight8: Any = None) -> Any:
        """x [..., K] through `layer`'s folded weight -> [..., N] in x's dtype; `weight8`:
        that weight already cast (self.weight8), else it is built for this call."""
        import torch

        flat = x.reshape(-1, x.shape[-1])
        x8, x_scale = _rows_cast_once(x, flat, self._cast_rows)
        if weight8 is None:
            weight8 = self.weight8(layer)
        out = torch._scaled_mm(x8, weight8.t(), scale_a=x_scale,
                               scale_b=self.scale_rows, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


#: q, k and v read one input, and so do gate and up: with this on, the first projection's
#: cast of it serves the others (a Llama layer casts 4 inputs, not 7: fewer kernel launches
#: on a burst that is near host-bound, bench/GPU_NOTES.md run 27), and the cast lives as
#: long as its input (+1 byte a token per hidden unit at the MLP: 12.6 MB for a 3,072-token
#: batch of a 7B). Off until a card has timed it (bench option `+castshare`): the burst
#: figures in the README were measured without it.
SHARE_INPUT_CASTS = False


def _rows_cast_once(x: Any, flat: Any, cast: Any) -> tuple[Any, Any]:
    """cast(flat), kept on the input tensor itself, so it lives exactly as long as the
    input and a later projection of the same tensor reuses it. No version check: a forward
    does not write to a layer input between the projections that read it (and inference
    tensors keep no version counter)."""
    if not SHARE_INPUT_CASTS:
        return cast(flat)
    rows = x.__dict__.get("_radproto_fp8_rows")
    if rows is None:
        rows = x._radproto_fp8_rows = cast(flat)
    return rows


def _cast_rows(x: Any) -> tuple[Any, Any]:
    """Each row to e4m3 with its own scale: (fp8 [M, K], float32 scales [M, 1])."""
    import torch

    scale = (x.abs().amax(-1, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def _cast_weight(weight: Any, inv_scale: Any) -> Any:
    import torch

    return (weight.float() * inv_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def _compiled(fn: Any) -> Any:
    """fn through torch.compile at its first call (one fused kernel instead of four passes
    over a [tokens, K] tensor), built lazily so importing this module compiles nothing."""
    compiled: list[Any] = []

    def call(*args: Any) -> Any:
        if not compiled:
            import torch

            compiled.append(torch.compile(fn, dynamic=True))
        return compiled[0](*args)

    return call


_cast_rows_compiled = _compiled(_cast_rows)
_cast_weight_compiled = _compiled(_cast_weight)


def fp8_supported() -> bool:
    """Whether this process's CUDA card has FP8 tensor cores (compute capability >= 8.9)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def fp8_burst(model: Any, *, compile_casts: bool = True) -> int:
    """Give every folded LoRA layer over a 4-bit base (kernels.fold_lora) its FP8 GEMM;
    returns how many. Layers without the fold are left alone (FP8 takes the fold's calls)."""
    from radproto.model.kernels import lean_4bit_layers

    count = 0
    for module in lean_4bit_layers(model):
        if module.__dict__.get("_radproto_fold_tokens"):
            module._radproto_fp8 = Fp8Gemm(module, compile_casts=compile_casts)
            count += 1
    return count
