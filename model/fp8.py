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

Where Triton runs (CUDA), one kernel does the whole weight side: it reads the NF4 bytes and
their absmax, adds the adapter's B @ A for its tile on the tensor cores and writes e4m3, one
byte a weight (bitsandbytes' dequantisation alone writes two and the fold reads and writes
them again). Elsewhere the same arithmetic runs as torch operations (the CPU tests).

The rounding, measured on the shipped model (bench/quant_accuracy.py, every decoder linear
layer, the calibration set): head top-1 92.8% against 93.4%, the same top-1 for 99.4% of
orders; the blend 94.4% either way.

Opt-in (setting `fp8_burst`); needs a card with FP8 tensor cores (compute capability 8.9 or
later: Ada, Hopper); elsewhere it warns and changes nothing.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn


class Fp8Gemm:
    """x @ W^T in FP8 for one folded LoRA layer: W's scale fixed at start, x's per token."""

    def __init__(self, layer: Any, *, compile_casts: bool = True,
                 fused: bool | None = None) -> None:
        import torch

        from radproto.model.kernels import folded_weight

        dtype = getattr(layer.base_layer, "compute_dtype", None) or torch.bfloat16
        with torch.no_grad():
            folded = folded_weight(layer, dtype)  # what each call rebuilds, in its dtype
            amax = folded.abs().amax().float().clamp(min=1e-12)
        n = folded.shape[0]
        del folded
        self.scale = amax / E4M3_MAX  # 0-dim float32 on the weight's device
        self.inv_scale = 1.0 / self.scale
        # _scaled_mm's row-wise form wants one weight scale per output: the same value
        self.scale_rows = self.scale.expand(1, n).contiguous()
        self._cast_weight = _cast_weight_compiled if compile_casts else _cast_weight
        self._cast_rows = _cast_rows_compiled if compile_casts else _cast_rows
        if fused is None:
            fused = (layer.base_layer.weight.is_cuda and triton_available()
                     and nf4_layout_supported(layer.base_layer.weight))
        self.fused = fused
        with torch.no_grad():
            self.lora = lora_operands(layer, dtype) if fused else None

    def weight8(self, layer: Any) -> Any:
        """The folded weight [N, K] in e4m3, divided by the scale."""
        import torch

        if self.fused:
            weight = layer.base_layer.weight
            out = torch.empty(weight.quant_state.shape, dtype=torch.float8_e4m3fn,
                              device=weight.device)
            return nf4_fold_cast(weight, *self.lora, self.inv_scale, out)
        from radproto.model.kernels import folded_weight

        dtype = getattr(layer.base_layer, "compute_dtype", None) or torch.bfloat16
        return self._cast_weight(folded_weight(layer, dtype), self.inv_scale)

    def __call__(self, x: Any, layer: Any) -> Any:
        """x [..., K] through `layer`'s folded weight -> [..., N] in x's dtype."""
        import torch

        flat = x.reshape(-1, x.shape[-1])
        x8, x_scale = self._cast_rows(flat)
        out = torch._scaled_mm(x8, self.weight8(layer).t(), scale_a=x_scale,
                               scale_b=self.scale_rows, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


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


# ------------------------------------------------------------- the fused weight-side kernel
def lora_operands(layer: Any, dtype: Any) -> tuple[Any, Any]:
    """Every active adapter of `layer` as one (A [R, K], B [N, R]) pair in `dtype`, B already
    times its adapter's scale, R padded with zeros to a power of two >= 16 (tl.dot's
    smallest). A layer without an adapter gets zeros."""
    import torch

    base = layer.base_layer
    n, k = base.weight.quant_state.shape if hasattr(base.weight, "quant_state") \
        else base.weight.shape
    device = base.weight.device
    a_parts, b_parts = [], []
    for name in layer.active_adapters:
        if name in layer.lora_A:
            a_parts.append(layer.lora_A[name].weight.float())
            b_parts.append(layer.lora_B[name].weight.float() * layer.scaling[name])
    rank = sum(a.shape[0] for a in a_parts)
    padded = max(16, 1 << max(rank - 1, 0).bit_length())
    a = torch.zeros(padded, k, device=device)
    b = torch.zeros(n, padded, device=device)
    if rank:
        a[:rank] = torch.cat(a_parts)
        b[:, :rank] = torch.cat(b_parts, dim=1)
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()


@functools.cache
def _triton() -> tuple[Any, Any] | None:
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl


def triton_available() -> bool:
    """Whether Triton can be imported (it ships with torch's CUDA builds)."""
    return _triton() is not None


def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1: the tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def nf4_layout_supported(weight: Any) -> bool:
    """Whether `weight` (a bitsandbytes Params4bit) is in the layout the kernel reads:
    NF4, a 2-D weight flattened row by row, whole quantisation blocks per row (not the
    layout bitsandbytes repacks to on AVX-512 CPUs)."""
    state = getattr(weight, "quant_state", None)
    if state is None or getattr(state, "quant_type", None) != "nf4":
        return False
    if getattr(state, "packing_format_for_cpu", False) or len(state.shape) != 2:
        return False
    return state.shape[1] % state.blocksize == 0 and state.blocksize % 32 == 0


def _statistics(weight: Any) -> tuple:
    """The kernel's view of a weight's quantisation state, read once (the host copy of
    `offset` would otherwise synchronise every call)."""
    cached = weight.__dict__.get("_radproto_nf4")
    if cached is None:
        import torch

        state = weight.quant_state
        nf4 = state.code.to(torch.float32)
        if getattr(state, "nested", False):
            cached = (True, state.absmax, state.state2.code.to(torch.float32),
                      state.state2.absmax, float(state.offset), int(state.state2.blocksize),
                      nf4)
        else:
            absmax = state.absmax.to(torch.float32)
            cached = (False, absmax, nf4, absmax, 0.0, 1, nf4)
        weight.__dict__["_radproto_nf4"] = cached
    return cached


@functools.cache
def _kernel() -> Any:
    triton, tl = _triton()

    @triton.jit
    def nf4_fold_cast_kernel(w_ptr, absmax_ptr, code2_ptr, absmax2_ptr, nf4_ptr, a_ptr, b_ptr,
                             inv_scale_ptr, out_ptr, offset, N, K, NESTED: tl.constexpr,
                             QBLOCK: tl.constexpr, QBLOCK2: tl.constexpr, RANK: tl.constexpr,
                             BLOCK_N: tl.constexpr, LIMIT: tl.constexpr):
        # A tile is BLOCK_N weight rows by one quantisation block (QBLOCK values of a row):
        # one absmax per row. bitsandbytes packs two values a byte, the first (even column)
        # in the high nibble.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        step = tl.program_id(1)
        row_ok = rows < N
        pair = tl.arange(0, QBLOCK // 2)
        k0 = step * QBLOCK
        packed = tl.load(w_ptr + (rows[:, None] * K + k0) // 2 + pair[None, :],
                         mask=row_ok[:, None], other=0)
        block = rows * (K // QBLOCK) + step
        if NESTED:
            q = tl.load(absmax_ptr + block, mask=row_ok, other=0).to(tl.int32)
            amax = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + block // QBLOCK2) + offset
        else:
            amax = tl.load(absmax_ptr + block, mask=row_ok, other=0.0)
        even = tl.load(nf4_ptr + (packed >> 4).to(tl.int32)) * amax[:, None]
        odd = tl.load(nf4_ptr + (packed & 15).to(tl.int32)) * amax[:, None]
        # the adapter's part of this tile: B[rows, :] @ A[:, columns], even and odd columns
        r = tl.arange(0, RANK)
        b = tl.load(b_ptr + rows[:, None] * RANK + r[None, :], mask=row_ok[:, None], other=0.0)
        a_at = a_ptr + r[:, None] * K + (k0 + 2 * pair)[None, :]
        even += tl.dot(b, tl.load(a_at))
        odd += tl.dot(b, tl.load(a_at + 1))
        inv_scale = tl.load(inv_scale_ptr)
        even = tl.minimum(tl.maximum(even * inv_scale, -LIMIT), LIMIT)
        odd = tl.minimum(tl.maximum(odd * inv_scale, -LIMIT), LIMIT)
        out_at = out_ptr + rows[:, None] * K + (k0 + 2 * pair)[None, :]
        tl.store(out_at, even.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
        tl.store(out_at + 1, odd.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])

    return nf4_fold_cast_kernel


def nf4_fold_cast(weight: Any, lora_a: Any, lora_b: Any, inv_scale: Any, out: Any, *,
                  block_n: int = 64) -> Any:
    """(dequantise(weight) + lora_b @ lora_a) * inv_scale, clamped to e4m3's range, written
    into `out` [N, K] in its dtype (e4m3 on the card; float32 in the interpreter's tests)."""
    state = weight.quant_state
    n, k = state.shape
    nested, absmax, code2, absmax2, offset, qblock2, nf4 = _statistics(weight)
    grid = (-(-n // block_n), k // int(state.blocksize))
    _kernel()[grid](weight.data.reshape(-1), absmax, code2, absmax2, nf4, lora_a, lora_b,
                    inv_scale, out, offset, n, k, NESTED=nested, QBLOCK=int(state.blocksize),
                    QBLOCK2=qblock2, RANK=lora_a.shape[0], BLOCK_N=block_n, LIMIT=E4M3_MAX)
    return out


def fp8_supported() -> bool:
    """Whether this process's CUDA card has FP8 tensor cores (compute capability >= 8.9)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def fp8_burst(model: Any, *, compile_casts: bool = True, fused: bool | None = None) -> int:
    """Give every folded LoRA layer over a 4-bit base (kernels.fold_lora) its FP8 GEMM;
    returns how many. Layers without the fold are left alone (FP8 takes the fold's calls).
    `fused`: the Triton weight kernel (None: where Triton runs on CUDA)."""
    from radproto.model.kernels import lean_4bit_layers

    count = 0
    for module in lean_4bit_layers(model):
        if module.__dict__.get("_radproto_fold_tokens"):
            module._radproto_fp8 = Fp8Gemm(module, compile_casts=compile_casts, fused=fused)
            if count == 0 and module._radproto_fp8.fused:
                error = check_fused(module._radproto_fp8, module)
                log.info("FP8 weight kernel self-check: relative error %.2g", error)
            count += 1
    return count


def check_fused(gemm: Fp8Gemm, layer: Any, limit: float = 2e-2) -> float:
    """The Triton kernel's e4m3 weight against torch's dequantise, fold and cast of the same
    layer: a wrong layout fails the start, not a radiologist's suggestion. Returns the mean
    relative difference (e4m3 rounding of the two sums: ~1e-3)."""
    import torch

    from radproto.model.errors import ModelError
    from radproto.model.kernels import folded_weight

    with torch.no_grad():
        fused = gemm.weight8(layer).float()
        dtype = getattr(layer.base_layer, "compute_dtype", None) or torch.bfloat16
        reference = _cast_weight(folded_weight(layer, dtype), gemm.inv_scale).float()
    error = float((fused - reference).abs().mean() / reference.abs().mean().clamp(min=1e-12))
    if not error < limit:  # NaN fails too
        raise ModelError(f"the FP8 weight kernel does not match its weights (relative error "
                         f"{error:.3g} against at most {limit}): not serving through it")
    return error
