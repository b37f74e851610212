"""Probe: other 4-bit / 8-bit GEMM paths against bitsandbytes NF4 on one CUDA card.

For the linear shapes of a Llama-2-7B layer and a range of token counts, times
bitsandbytes' Linear4bit forward (dequantise to bf16, then cuBLAS) beside

- torch's built-in tinygemm int4 kernel (`aten._weight_int4pack_mm`: weights pre-packed at
  load into the tensor-core fragment order, asymmetric groups of 64 or 128), fed with the
  NF4 weight re-quantised (what the service would load);
- FP8 (e4m3) `torch._scaled_mm` with per-row weight and per-token activation scales: the
  weight dequantised by bitsandbytes and cast each call (the burst path within 5 GB), and
  pre-cast (resident fp8, an upper bound), the casts as plain float32 operations (`fp8`);
  and with compiled casts (`fp8t`: one scale per tensor for both; `fp8r`: per-token
  activations, one weight scale per tensor, model/fp8.py's form): the GEMM alone, the
  weight resident, and both cast per call from NF4;
- GemLite (Triton low-bit kernels, `pip install gemlite`, pure Python; shipped autotune
  configs for the H100) with the same re-quantised weight: bf16 activations x int4 weights
  (A16W4) and FP8 activations x int4 weights (A8W4, dynamic per-token scales), when the
  package is importable (`--gemlite`);
- dense bf16 (13 GB resident: not an option within 5 GB, the floor).

Each timing is one call's median inside a CUDA graph of 10 calls. Prints JSON rows and a
per-forward summary (32 layers); `--out DIR` writes int4_probe.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

LLAMA_7B_LAYER = [(4096, 4096, 4), (11008, 4096, 2), (4096, 11008, 1)]
TOKENS = [16, 96, 256, 1024, 8192]


def _time_ms(fn: Any, calls: int = 10, reps: int = 10) -> float:
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def uniform4(dense: Any, group: int) -> tuple[Any, Any, Any]:
    """HQQ-format asymmetric 4-bit groups (round to nearest): W ~ (q - zero) * scale; q uint8
    [N, K], scale and zero [N, K / group]."""
    import torch

    n, k = dense.shape
    w = dense.float().reshape(n, k // group, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = ((w - lo) / scale).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
    return q, scale.reshape(n, -1), (-lo / scale).reshape(n, -1)


def int4pack(dense: Any, group: int, inner_k_tiles: int) -> tuple[Any, Any]:
    """tinygemm's packed weight and [K/group, N, 2] scales-and-zeros for the same groups as
    uniform4, in its convention: W ~ (q - 8) * scale + zero."""
    import torch

    q, scale, hqq_zero = uniform4(dense, group)
    zero = (8 - hqq_zero) * scale
    packed_u8 = q[:, ::2] << 4 | q[:, 1::2]
    packed = torch.ops.aten._convert_weight_to_int4pack(packed_u8.contiguous(), inner_k_tiles)
    sz = torch.stack([scale, zero], dim=2)  # [N, K / group, 2]
    return packed, sz.transpose(0, 1).contiguous().to(torch.bfloat16)


def gemlite_layers(dense: Any, group: int = 64) -> dict[str, Any]:
    """GemLite linear layers for one weight (empty when gemlite is not importable)."""
    import torch
    try:
        from gemlite.helper import A8Wn_HQQ_INT_dynamic, A16Wn
    except Exception as exc:
        print(f"gemlite not available: {type(exc).__name__}: {exc}", flush=True)
        return {}
    q, scale, zero = uniform4(dense, group)
    out = {}
    for key, make in (("gemlite_a16w4", lambda: A16Wn(device="cuda:0", dtype=torch.bfloat16)
                       .from_weights(q, scale.to(torch.bfloat16), zero.to(torch.bfloat16),
                                     W_nbits=4, group_size=group)),
                      ("gemlite_a8w4", lambda: A8Wn_HQQ_INT_dynamic(
                          device="cuda:0", dtype=torch.bfloat16, W_nbits=4)
                       .from_weights(q, scale, zero.to(torch.bfloat16)))):
        try:
            out[key] = make()
        except Exception as exc:
            print(f"{key}: {type(exc).__name__}: {exc}"[:300], flush=True)
    return out


def fp8_rows(t: Any) -> tuple[Any, Any]:
    """Per-row e4m3 quantisation: (fp8 tensor, float32 scales [rows, 1])."""
    import torch

    amax = t.abs().amax(-1, keepdim=True).float().clamp(min=1e-6)
    scale = amax / 448.0
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def _fp8_tensor_activation() -> Any:
    """A compiled per-tensor e4m3 quantiser of an activation (one scale for the whole batch:
    cuBLAS's tensor-wise form; model/fp8.py scales per token instead)."""
    import torch

    @torch.compile(dynamic=False)
    def activation(x: Any) -> tuple[Any, Any]:
        scale = (x.abs().amax().float() / 448.0).clamp(min=1e-12)
        return (x.float() / scale).to(torch.float8_e4m3fn), scale

    return activation


def baseline_row(layer: Any, dense: Any, m: int) -> tuple[Any, Any, dict[str, Any]]:
    """For `m` tokens through an NF4 layer and its dequantised weight: the input x, rel_err
    (an output's mean |difference| from the NF4 layer's over the mean |output|) and the row
    with the timings every probe compares against: bitsandbytes and dense bf16."""
    import torch

    n, k = dense.shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    row: dict[str, Any] = {"tokens": m, "out": n, "in": k}
    with torch.inference_mode():
        ref = layer(x).float()
        row["ref_abs_mean"] = float(ref.abs().mean())
        row["bnb_ms"] = _time_ms(lambda: layer(x))
        row["dense_bf16_ms"] = _time_ms(lambda: x @ dense.t())

    def rel_err(out: Any) -> float:
        return float((out.float() - ref).abs().mean()) / row["ref_abs_mean"]

    return x, rel_err, row


def _measure(layer: Any, dense: Any, m: int, gemlite: dict[str, Any],
             skip: set[str]) -> dict[str, Any]:
    import torch

    x, rel_err, row = baseline_row(layer, dense, m)
    with torch.inference_mode():
        for group, tiles in ((64, 8), (128, 8), (64, 4), (128, 2)) if "int4" not in skip else ():
            try:
                packed, sz = int4pack(dense, group, tiles)
                out = torch.ops.aten._weight_int4pack_mm(x, packed, group, sz)
                key = f"int4_g{group}_t{tiles}"
                row[key + "_ms"] = _time_ms(
                    lambda p=packed, s=sz, g=group: torch.ops.aten._weight_int4pack_mm(
                        x, p, g, s))
                row[key + "_rel_err"] = rel_err(out)
            except Exception as exc:  # a probe records what failed
                row[f"int4_g{group}_t{tiles}_error"] = f"{type(exc).__name__}: {exc}"[:200]
        for key, glayer in gemlite.items():
            try:
                row[key + "_rel_err"] = rel_err(glayer(x))
                row[key + "_ms"] = _time_ms(lambda g=glayer: g(x))
            except Exception as exc:
                row[key + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
        if "fp8t" not in skip:
            _fp8t(layer, dense, x, row, rel_err)
        if "fp8" in skip:
            return row
        try:  # the first form: per-row scales for both, cast by plain float32 operations
            _fp8_timings(row, "fp8", layer, dense, x, rel_err, fp8_rows, _fp8_rows_weight,
                         gemm_alone=False, resident=True, error_from_nf4=False)
        except Exception as exc:
            row["fp8_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return row


def _fp8_rows_weight(weight: Any) -> tuple[Any, Any]:
    """A weight [N, K] cast per row for `_scaled_mm`'s second operand: (W8^T, scales [1, N])."""
    w8, scale = fp8_rows(weight)
    return w8.t(), scale.t().contiguous()


def _fp8_timings(row: dict[str, Any], prefix: str, layer: Any, dense: Any, x: Any,
                 rel_err: Any, quant_x: Any, quant_w: Any, *, gemm_alone: bool,
                 resident: bool, error_from_nf4: bool = True) -> None:
    """x @ W^T through `torch._scaled_mm` for one way of casting: quant_x(x) -> (x8,
    scale_a), quant_w(W) -> (W8^T, scale_b). Writes {prefix}_rel_err (W cast from NF4's
    float32 dequantisation, or with `error_from_nf4=False` from the bf16 `dense`), _gemm_ms
    (both operands cast beforehand), _resident_ms (W cast once, x per call) and _from_nf4_ms
    (both per call, W from bitsandbytes' dequantisation: what fits 5 GB)."""
    import bitsandbytes as bnb
    import torch

    def gemm(a: tuple[Any, Any], w: tuple[Any, Any]) -> Any:
        return torch._scaled_mm(a[0], w[0], scale_a=a[1], scale_b=w[1],
                                out_dtype=torch.bfloat16)

    x_cast, w_cast = quant_x(x), quant_w(dense)

    def from_nf4() -> Any:
        w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        return gemm(quant_x(x), quant_w(w))

    row[f"{prefix}_rel_err"] = rel_err(from_nf4() if error_from_nf4
                                       else gemm(quant_x(x), w_cast))
    if gemm_alone:
        row[f"{prefix}_gemm_ms"] = _time_ms(lambda: gemm(x_cast, w_cast))
    if resident:
        row[f"{prefix}_resident_ms"] = _time_ms(lambda: gemm(quant_x(x), w_cast))
    row[f"{prefix}_from_nf4_ms"] = _time_ms(from_nf4)


def _fp8t(layer: Any, dense: Any, x: Any, row: dict[str, Any], rel_err: Any) -> None:
    """FP8 with the weight's one scale per tensor (fixed from the dequantised weight, as the
    service fixes it at start) and the casts compiled (the weight cast and the per-token
    activation cast are model/fp8.py's own): activations scaled per tensor (`fp8t`, cuBLAS's
    fast form) and per token (`fp8r`, the service's); `fp8t` also with the weight resident
    in FP8 (6.5 GB on a 7B: does not fit 5 GB)."""
    from radproto.model.fp8 import E4M3_MAX, _cast_rows_compiled, _cast_weight_compiled

    try:
        w_scale = (dense.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
        inv_w = 1.0 / w_scale
        w_rows = w_scale.expand(1, dense.shape[0]).contiguous()  # the row-wise form's
        _fp8_timings(row, "fp8t", layer, dense, x, rel_err, _fp8_tensor_activation(),
                     lambda w: (_cast_weight_compiled(w, inv_w).t(), w_scale),
                     gemm_alone=True, resident=True)
        _fp8_timings(row, "fp8r", layer, dense, x, rel_err, _cast_rows_compiled,
                     lambda w: (_cast_weight_compiled(w, inv_w).t(), w_rows),
                     gemm_alone=True, resident=False)
    except Exception as exc:
        row["fp8t_error"] = f"{type(exc).__name__}: {exc}"[:300]


def nf4_layer(n: int, k: int) -> tuple[Any, Any]:
    """A CUDA bitsandbytes NF4 layer [n, k] of random weights (the next draw of torch's seeded
    generator) and its dequantised bf16 weight."""
    import bitsandbytes as bnb
    import torch

    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16,
                              quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(torch.randn(n, k) * k ** -0.5, requires_grad=False,
                                     quant_type="nf4", compress_statistics=True)
    layer = layer.cuda().eval()
    dense = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return layer, dense.to(torch.bfloat16)


def print_per_forward(results: list[dict[str, Any]], tokens: list[int]) -> None:
    """Per token count, every `*_ms` timing summed over one 32-layer forward's linears."""
    keys = sorted({key for r in results for key in r if key.endswith("_ms")})
    print()
    for m in tokens:
        rows = [r for r in results if r["tokens"] == m]
        sums = {key: 32 * sum(r.get(key, float("nan")) * r["per_layer"] for r in rows)
                for key in keys}
        print(f"{m} tokens, one 32-layer forward's linear layers (ms): "
              + ", ".join(f"{key[:-3]} {v:.2f}" for key, v in sums.items()))


def main() -> None:
    import bitsandbytes as bnb
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--gemlite", action="store_true")
    p.add_argument("--skip", default="", help="comma-separated keys not to time")
    args = p.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    torch.manual_seed(0)
    results: list[dict[str, Any]] = []
    for n, k, count in LLAMA_7B_LAYER:
        layer, dense = nf4_layer(n, k)
        glayers = gemlite_layers(dense) if args.gemlite else {}
        for m in tokens:
            row = _measure(layer, dense, m, glayers, set(args.skip.split(",")))
            row["per_layer"] = count
            results.append(row)
            print(json.dumps(row), flush=True)
    print_per_forward(results, tokens)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        env = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
               "bitsandbytes": bnb.__version__}
        (Path(args.out) / "int4_probe.json").write_text(
            json.dumps({"environment": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
