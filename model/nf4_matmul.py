"""x @ W^T with W in bitsandbytes' NF4 layout, dequantised tile by tile inside the GEMM.

bitsandbytes runs a 4-bit layer on more than one token by dequantising the whole weight to
bf16 in memory and then calling a GEMM: it reads the 4-bit bytes, writes four times as many
and reads them back. For one order (~100 tokens through a 7B) that memory traffic, not the
arithmetic, is most of the forward pass (bench/GPU_NOTES.md). This Triton kernel reads the
4-bit bytes once and dequantises each tile in registers, so the weight costs one read.

Layout (bitsandbytes 0.4x-0.50, `quant_type="nf4"`): the [out, in] weight flattened row by
row, two values a byte (the first in the high nibble), one absmax per `blocksize` values;
with double quantisation (`compress_statistics`) the absmax is itself 8-bit: code2[q] *
absmax2[block // blocksize2] + offset.

Used for small inference calls on CUDA only (kernels.lean_lora's forward); large batches
keep bitsandbytes' dequantise-then-GEMM, where the GEMM dominates and cuBLAS is faster.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.cache
def _triton() -> tuple[Any, Any] | None:
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl


def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1: the tests here)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """Whether Triton can be imported (it ships with torch's CUDA builds)."""
    return _triton() is not None


@functools.cache
def _kernel() -> Any:
    triton, tl = _triton()

    @triton.jit
    def nf4_matmul_kernel(x_ptr, w_ptr, absmax_ptr, code2_ptr, absmax2_ptr, nf4_ptr,
                          out_ptr, offset, M, N, K, stride_xm, stride_om,
                          NESTED: tl.constexpr, QBLOCK: tl.constexpr,
                          QBLOCK2: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
        # One K step is one quantisation block (QBLOCK values of a weight row), so each row
        # of the weight tile has a single absmax per step.
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        pair = tl.arange(0, QBLOCK // 2)
        row_ok = rows < M
        col_ok = cols < N
        blocks_per_row = K // QBLOCK
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(0, blocks_per_row):
            k0 = step * QBLOCK
            x_at = x_ptr + rows[:, None] * stride_xm + (k0 + 2 * pair)[None, :]
            x_even = tl.load(x_at, mask=row_ok[:, None], other=0.0)
            x_odd = tl.load(x_at + 1, mask=row_ok[:, None], other=0.0)
            packed = tl.load(w_ptr + (cols[:, None] * K + k0) // 2 + pair[None, :],
                             mask=col_ok[:, None], other=0)
            block = cols * blocks_per_row + step
            if NESTED:
                q = tl.load(absmax_ptr + block, mask=col_ok, other=0).to(tl.int32)
                scale = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + block // QBLOCK2) \
                    + offset
            else:
                scale = tl.load(absmax_ptr + block, mask=col_ok, other=0.0)
            high = tl.load(nf4_ptr + (packed >> 4).to(tl.int32)) * scale[:, None]
            low = tl.load(nf4_ptr + (packed & 15).to(tl.int32)) * scale[:, None]
            acc = tl.dot(x_even, tl.trans(high.to(x_even.dtype)), acc)
            acc = tl.dot(x_odd, tl.trans(low.to(x_odd.dtype)), acc)
        out_at = out_ptr + rows[:, None] * stride_om + cols[None, :]
        tl.store(out_at, acc.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    return nf4_matmul_kernel


def tile_config(m: int) -> dict[str, int]:
    """Tile sizes by the number of rows (tokens). Few rows: the weight read is the cost, so
    narrow tiles give every SM its share of the weight; measured on an H100 (GPU_NOTES)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    return {"BLOCK_M": block_m, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


def supported(weight: Any) -> bool:
    """Whether `weight` (a bitsandbytes Params4bit) has the layout this kernel reads."""
    state = getattr(weight, "quant_state", None)
    if state is None or getattr(state, "quant_type", None) != "nf4":
        return False
    if str(weight.dtype) != "torch.uint8" or len(state.shape) != 2:
        return False
    return state.shape[1] % state.blocksize == 0 and state.blocksize % 32 == 0


def nf4_linear(x: Any, weight: Any, bias: Any = None, *,
               config: dict[str, int] | None = None) -> Any:
    """x @ dequantise(weight)^T (+ bias) in x's dtype, never materialising the weight."""
    import torch

    state = weight.quant_state
    n, k = state.shape
    flat = x.reshape(-1, k)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    m = flat.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    nested, absmax, code2, absmax2, offset, qblock2, nf4 = _statistics(weight)
    cfg = dict(config or tile_config(m))
    block_m, block_n = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    grid = (-(-m // block_m), -(-n // block_n))
    _kernel()[grid](flat, weight.data.reshape(-1), absmax, code2, absmax2, nf4, out,
                    offset, m, n, k, flat.stride(0), out.stride(0), NESTED=nested,
                    QBLOCK=int(state.blocksize), QBLOCK2=qblock2,
                    BLOCK_M=block_m, BLOCK_N=block_n, **cfg)
    if bias is not None:
        out += bias.to(out.dtype)
    return out.view(*x.shape[:-1], n)


def _statistics(weight: Any) -> tuple:
    """The kernel's view of a weight's quantisation state, read once: `offset` is a device
    scalar whose host copy would synchronise (and break a CUDA graph capture) on every call."""
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
