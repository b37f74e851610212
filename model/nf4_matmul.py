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

import os
from typing import Any

try:  # Triton ships with torch's CUDA builds; the CPU venv keeps it aside (tests)
    import triton
    import triton.language as tl
except ImportError:
    triton = None

def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1: the tests here)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """Whether Triton can be imported (it ships with torch's CUDA builds)."""
    return triton is not None


if triton is not None:
    @triton.jit
    def _nf4_level(q):
        # bitsandbytes' 16 NF4 levels picked by the code's bits in registers: a table lookup
        # in memory for every weight would stall the loop on load latency
        b0 = (q & 1) != 0
        b1 = (q & 2) != 0
        b2 = (q & 4) != 0
        v0 = tl.where(b0, -0.6961928009986877, -1.0)
        v1 = tl.where(b0, -0.39491748809814453, -0.5250730514526367)
        v2 = tl.where(b0, -0.18477343022823334, -0.28444138169288635)
        v3 = tl.where(b0, 0.0, -0.09105003625154495)
        v4 = tl.where(b0, 0.16093020141124725, 0.07958029955625534)
        v5 = tl.where(b0, 0.33791524171829224, 0.24611230194568634)
        v6 = tl.where(b0, 0.5626170039176941, 0.44070982933044434)
        v7 = tl.where(b0, 1.0, 0.7229568362236023)
        w0 = tl.where(b1, v1, v0)
        w1 = tl.where(b1, v3, v2)
        w2 = tl.where(b1, v5, v4)
        w3 = tl.where(b1, v7, v6)
        return tl.where((q & 8) != 0, tl.where(b2, w3, w2), tl.where(b2, w1, w0))

    @triton.jit
    def _nf4_matmul_kernel(x_ptr, w_ptr, absmax_ptr, code2_ptr, absmax2_ptr, out_ptr,
                           offset, M, N, K, stride_xm, stride_om,
                           NESTED: tl.constexpr, QBLOCK: tl.constexpr,
                           QBLOCK2: tl.constexpr, BLOCKS_PER_STEP: tl.constexpr,
                           SPLIT_K: tl.constexpr, INTERLEAVE: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # A step covers BLOCKS_PER_STEP quantisation blocks (QBLOCK values of a weight row
        # each), the weight tile built as [K, N] so that the dot needs no transpose. With
        # SPLIT_K > 1 each program sums a slice of K into a float32 output atomically (few
        # rows: more programs to share the weight read, without re-reading x per column).
        STEP: tl.constexpr = BLOCKS_PER_STEP * QBLOCK
        HALF: tl.constexpr = STEP // 2
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        col_ok = cols < N
        blocks_per_row = K // QBLOCK
        steps = blocks_per_row // BLOCKS_PER_STEP // SPLIT_K
        first = pid_k * steps
        if INTERLEAVE:  # one dot: the two nibbles joined back into K order
            x_at = x_ptr + rows[:, None] * stride_xm + tl.arange(0, STEP)[None, :]
        else:  # two dots: even K positions with the high nibbles, odd with the low
            x_at = x_ptr + rows[:, None] * stride_xm + 2 * tl.arange(0, HALF)[None, :]
        w_at = w_ptr + cols[None, :] * (K // 2) + tl.arange(0, HALF)[:, None]
        block_at = cols[None, :] * blocks_per_row + tl.arange(0, BLOCKS_PER_STEP)[:, None]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(first, first + steps):
            packed = tl.load(w_at + step * HALF, mask=col_ok[None, :], other=0)
            block = block_at + step * BLOCKS_PER_STEP  # [BLOCKS_PER_STEP, BLOCK_N]
            if NESTED:
                q = tl.load(absmax_ptr + block, mask=col_ok[None, :], other=0).to(tl.int32)
                scale = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + block // QBLOCK2) \
                    + offset
            else:
                scale = tl.load(absmax_ptr + block, mask=col_ok[None, :], other=0.0)
            high = _nf4_level((packed >> 4).to(tl.int32))  # [HALF, BLOCK_N]
            low = _nf4_level((packed & 15).to(tl.int32))
            if INTERLEAVE:
                x = tl.load(x_at + step * STEP, mask=row_ok[:, None], other=0.0)
                levels = tl.reshape(tl.permute(tl.join(high, low), (0, 2, 1)), (STEP, BLOCK_N))
                scale = tl.reshape(tl.broadcast_to(scale[:, None, :],
                                                   (BLOCKS_PER_STEP, QBLOCK, BLOCK_N)),
                                   (STEP, BLOCK_N))
                acc = tl.dot(x, (levels * scale).to(x.dtype), acc)
            else:
                x_even = tl.load(x_at + step * STEP, mask=row_ok[:, None], other=0.0)
                x_odd = tl.load(x_at + step * STEP + 1, mask=row_ok[:, None], other=0.0)
                scale = tl.reshape(tl.broadcast_to(scale[:, None, :],
                                                   (BLOCKS_PER_STEP, QBLOCK // 2, BLOCK_N)),
                                   (HALF, BLOCK_N))
                acc = tl.dot(x_even, (high * scale).to(x_even.dtype), acc)
                acc = tl.dot(x_odd, (low * scale).to(x_odd.dtype), acc)
        out_at = out_ptr + rows[:, None] * stride_om + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        if SPLIT_K == 1:
            tl.store(out_at, acc.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(out_at, acc, mask=mask)


NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
              0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)  # the kernel's nf4_level hard-codes these


def tile_config(m: int) -> dict[str, int]:
    """Tile sizes by the number of rows (tokens). Few rows: the weight read is the cost, so
    narrow tiles give every SM its share of the weight; measured on an H100 (GPU_NOTES)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    return {"BLOCK_M": block_m, "BLOCK_N": 64, "BLOCKS_PER_STEP": 2, "SPLIT_K": 1,
            "INTERLEAVE": 1, "num_warps": 4, "num_stages": 3}


def supported(weight: Any) -> bool:
    """Whether `weight` (a bitsandbytes Params4bit) has the layout this kernel reads."""
    state = getattr(weight, "quant_state", None)
    if state is None or getattr(state, "quant_type", None) != "nf4":
        return False
    if str(weight.dtype) != "torch.uint8" or len(state.shape) != 2:
        return False
    if state.shape[1] % state.blocksize or state.blocksize % 32:
        return False
    levels = state.code.detach().float().cpu().tolist()
    return all(abs(a - b) < 1e-7 for a, b in zip(levels, NF4_LEVELS, strict=True))


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
    nested, absmax, code2, absmax2, offset, qblock2 = _statistics(weight)
    cfg = dict(config or tile_config(m))
    block_m, block_n = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    per_step, split = cfg.pop("BLOCKS_PER_STEP", 1), cfg.pop("SPLIT_K", 1)
    blocks = k // state.blocksize
    while blocks % per_step:  # e.g. 11008 = 172 blocks of 64: 4 divides, 8 does not
        per_step //= 2
    while (blocks // per_step) % split:
        split -= 1
    if split > 1:  # float32 partial sums added atomically, then x's dtype
        out = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    else:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (-(-m // block_m), -(-n // block_n), split)
    _nf4_matmul_kernel[grid](flat, weight.data.reshape(-1), absmax, code2, absmax2, out,
                             offset, m, n, k, flat.stride(0), out.stride(0), NESTED=nested,
                             QBLOCK=int(state.blocksize), QBLOCK2=qblock2,
                             BLOCKS_PER_STEP=per_step, SPLIT_K=split,
                             INTERLEAVE=bool(cfg.pop("INTERLEAVE", 1)),
                             BLOCK_M=block_m, BLOCK_N=block_n, **cfg)
    out = out.to(x.dtype)
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
        if getattr(state, "nested", False):
            cached = (True, state.absmax, state.state2.code.to(torch.float32),
                      state.state2.absmax, float(state.offset), int(state.state2.blocksize))
        else:
            absmax = state.absmax.to(torch.float32)
            cached = (False, absmax, absmax, absmax, 0.0, 1)
        weight.__dict__["_radproto_nf4"] = cached
    return cached
