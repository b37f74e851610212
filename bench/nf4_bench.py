"""The fused NF4 GEMM (model/nf4_matmul.py) against bitsandbytes on one CUDA card.

For the linear shapes of a Llama-2-7B layer and a range of token counts, times
bitsandbytes' Linear4bit forward (dequantise to bf16, then cuBLAS) beside the Triton kernel
under several tile configurations, checks the kernel's output against bitsandbytes', and
sums one 32-layer forward's linear time. Prints a table; `--out DIR` also writes
nf4_bench.json there (bench/GPU_NOTES.md records the runs).

    python -m bench.nf4_bench --out $OUT          # on the GPU machine (bitsandbytes needed)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

# q, k, v, o (4096 x 4096), gate and up (11008 x 4096), down (4096 x 11008): (out, in, count)
LLAMA_7B_LAYER = [(4096, 4096, 4), (11008, 4096, 2), (4096, 11008, 1)]
TOKENS = [16, 96, 256]
CONFIGS = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCKS_PER_STEP": s, "SPLIT_K": split,
     "INTERLEAVE": inter, "num_warps": 4, "num_stages": 3}
    for bm in (16, 32, 64, 128) for bn in (32, 64, 128) for s in (1, 2)
    for split in (1, 2, 4) for inter in (0, 1)
]


def _time_ms(fn: Any, calls: int = 10, reps: int = 10) -> float:
    """GPU milliseconds per call, `calls` calls captured in one CUDA graph (as the lone-order
    path runs them): eager timing would measure Python's launch time, not the kernel's."""
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


def _measure(layer: Any, dense: Any, m: int) -> dict[str, Any]:
    """One weight at one token count: bitsandbytes, dense bf16, the kernel's tiles."""
    import torch

    from radproto.model import nf4_matmul

    k = dense.shape[1]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = layer(x)
        row: dict[str, Any] = {"tokens": m, "bnb_ms": _time_ms(lambda: layer(x)),
                               "dense_bf16_ms": _time_ms(lambda: x @ dense.t())}
        best = None
        for cfg in CONFIGS:
            if not m // 2 <= cfg["BLOCK_M"] <= max(16, 2 * m):  # one or two row tiles
                continue
            try:
                out = nf4_matmul.nf4_linear(x, layer.weight, config=cfg)
                ms = _time_ms(lambda cfg=cfg: nf4_matmul.nf4_linear(x, layer.weight,
                                                                     config=cfg))
            except Exception as exc:  # a tile the card cannot hold (shared memory)
                row.setdefault("failed", []).append(f"{cfg}: {type(exc).__name__}")
                continue
            if best is None or ms < best[0]:
                best = (ms, cfg, float((out.float() - ref.float()).abs().max()))
        out = nf4_matmul.nf4_linear(x, layer.weight)
        row["fused_default_ms"] = _time_ms(lambda: nf4_matmul.nf4_linear(x, layer.weight))
        row["fused_default_config"] = nf4_matmul.tile_config(m)
        row["fused_default_max_abs_diff"] = float((out.float() - ref.float()).abs().max())
        row["ref_max_abs"] = float(ref.float().abs().max())
        if best:
            row["fused_best_ms"], row["fused_best_config"], row["fused_best_diff"] = best
    return row


def main() -> None:
    import bitsandbytes as bnb
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    args = p.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    torch.manual_seed(0)
    results: list[dict[str, Any]] = []
    for n, k, count in LLAMA_7B_LAYER:
        layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16,
                                  quant_type="nf4", compress_statistics=True)
        layer.weight = bnb.nn.Params4bit(torch.randn(n, k) * k ** -0.5, requires_grad=False,
                                         quant_type="nf4", compress_statistics=True)
        layer = layer.cuda().eval()
        dense = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        dense = dense.to(torch.bfloat16)
        for m in tokens:
            row = _measure(layer, dense, m)
            row.update({"out": n, "in": k, "per_layer": count})
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.out:  # as it goes: a call cut short keeps what it measured
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "nf4_rows.jsonl").open("a").write(json.dumps(row) + "\n")
    print()
    print("| out x in | tokens | bitsandbytes ms | fused (default tiles) ms | fused (best) ms "
          "| best tiles | dense bf16 ms | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['out']} x {r['in']} | {r['tokens']} | {r['bnb_ms']:.3f} | "
              f"{r['fused_default_ms']:.3f} | {r.get('fused_best_ms', float('nan')):.3f} | "
              f"{r.get('fused_best_config')} | {r['dense_bf16_ms']:.3f} | "
              f"{r['fused_default_max_abs_diff']:.3g} (of {r['ref_max_abs']:.3g}) |")
    print()
    for m in tokens:
        rows = [r for r in results if r["tokens"] == m]
        per = {key: 32 * sum(r[key] * r["per_layer"] for r in rows)
               for key in ("bnb_ms", "fused_default_ms", "dense_bf16_ms")}
        best = 32 * sum(r.get("fused_best_ms", r["fused_default_ms"]) * r["per_layer"]
                        for r in rows)
        print(f"{m} tokens, one 32-layer forward's linear layers: bitsandbytes "
              f"{per['bnb_ms']:.1f} ms, fused {per['fused_default_ms']:.1f} ms "
              f"(best tiles {best:.1f}), dense bf16 {per['dense_bf16_ms']:.1f} ms")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        env = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
               "bitsandbytes": bnb.__version__}
        (Path(args.out) / "nf4_bench.json").write_text(
            json.dumps({"environment": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
