"""Probe: one order through a whole Llama-2-7B-shaped decoder, bitsandbytes NF4 against Marlin int4.

bench/marlin_probe.py timed the linear layers alone; this times what a lone order pays in the
service: `GraphedScorer` (model/cuda_scoring.py, the service's latency path) replaying a
captured CUDA graph of the decoder and the protocol head for one prompt, host copies
included, for prompts of the calibration set's token lengths (bench/nf4_experiment/
calib_prompt_lengths.json: median 64, 31-115), with the service's 32-token buckets and with
16-token buckets. Every linear layer of the random bf16 model is held three ways at once and
switched between runs:

- `nf4`: bitsandbytes Linear4bit (NF4, double quantization, bf16 compute), the service's path;
- `marlin`: that NF4 weight dequantised and re-quantised to GPTQ symmetric int4 (groups of
  128) in Marlin's layout (model/marlin.py's `MarlinWeight`, gptqmodel 7.7.0's kernel built on
  the card), which is what a load-time conversion of the LoRA-folded weight would serve;
- `dense`: the bf16 weight itself (13 GB: the floor, not an option within 5 GB).

No LoRA runs here: the service's NF4 path adds ~2 ms of LoRA GEMMs to a lone order (GPU_NOTES
run 13), which a Marlin path would fold into the weight before re-quantising; so the `nf4` row
is a lower bound of today's lone order. Weights are random, so the distributions are nearly
flat and the agreement columns say only that the paths compute the same function.

Device command (carry `.gptq` and `.bnb_slim`; the Marlin build as in marlin_probe):

    bash bench/gpu_card/setup.sh && \
        PYTHONPATH=$PWD:/tmp/site python3 -m bench.lone_order_probe --out $OUT
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu_model import LINEAR_NAMES, llama_config, random_llama
from bench.marlin_probe import build
from radproto.model.marlin import Int4Weight, MarlinWeight

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = ROOT / "bench" / "nf4_experiment" / "calib_prompt_lengths.json"
MODES = ("nf4", "marlin", "dense")
N_PROTOCOLS = 58


def _switch_class() -> type:
    import torch

    class SwitchLinear(torch.nn.Module):
        """One linear layer held as dense bf16, NF4 and Marlin int4; `mode` picks the forward."""

        def __init__(self, dense: Any, nf4: Any, marlin: Any) -> None:
            super().__init__()
            self.dense, self.nf4, self.marlin, self.mode = dense, nf4, marlin, "nf4"

        def forward(self, x: Any) -> Any:
            if self.mode == "marlin":
                flat = x.reshape(-1, x.shape[-1])
                return self.marlin(flat).reshape(*x.shape[:-1], self.marlin.n)
            return self.nf4(x) if self.mode == "nf4" else self.dense(x)

    return SwitchLinear


def convert(model: Any, ops: Any) -> dict[str, float]:
    """Every decoder linear layer becomes a SwitchLinear; returns each format's weight GB."""
    import bitsandbytes as bnb
    import torch

    switch = _switch_class()
    sizes = {"dense": 0.0, "nf4": 0.0, "marlin": 0.0}
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LINEAR_NAMES:
                linear = getattr(parent, name, None)
                if linear is None:
                    continue
                nf4 = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                        compute_dtype=torch.bfloat16, quant_type="nf4",
                                        compress_statistics=True, device="meta")
                weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False,
                                           quant_type="nf4", compress_statistics=True,
                                           module=nf4)
                nf4.weight = weight._quantize("cuda")
                state = nf4.weight.quant_state
                from_nf4 = bnb.functional.dequantize_4bit(nf4.weight.data, state)
                marlin = MarlinWeight(ops, Int4Weight.quantize(from_nf4))
                del from_nf4
                sizes["dense"] += linear.weight.numel() * 2 / 1e9
                sizes["nf4"] += (nf4.weight.data.numel() + state.absmax.numel()
                                 + state.state2.absmax.numel() * 4) / 1e9
                sizes["marlin"] += (marlin.qweight.numel() * 4 + marlin.scales.numel() * 2) / 1e9
                setattr(parent, name, switch(linear, nf4, marlin))
    return sizes


def set_mode(model: Any, mode: str) -> None:
    for module in model.modules():
        if hasattr(module, "marlin") and hasattr(module, "mode"):
            module.mode = mode


def time_lone_orders(model: Any, head: Any, prompts: list[list[int]], bucket: int
                     ) -> tuple[dict[str, float], Any]:
    """The service's graphed path, one prompt at a time: a warm pass (captures every bucket's
    graph), then a timed pass. Returns (timings, [n, protocols] log-probabilities)."""
    import numpy as np
    import torch

    from radproto.model.cuda_scoring import GraphedScorer

    scorer = GraphedScorer(model, head, pad_token_id=0, bucket=bucket, max_prompt=256)
    started = time.perf_counter()
    for prompt in prompts:
        scorer.log_probs_one(prompt)
    warm_s = time.perf_counter() - started
    times, out = [], []
    for prompt in prompts:
        begin = time.perf_counter()
        out.append(scorer.log_probs_one(prompt))
        times.append(1000 * (time.perf_counter() - begin))
    times.sort()
    row = {"bucket": bucket, "orders": len(prompts), "graphs": len(scorer.graphs),
           "capture_and_warm_s": round(warm_s, 1),
           "p50_ms": round(statistics.median(times), 2),
           "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
           "mean_ms": round(statistics.fmean(times), 2)}
    del scorer
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return row, np.stack(out)


def time_burst(model: Any, head: Any, prompts: list[list[int]], batch_tokens: int
               ) -> dict[str, float]:
    """The service's batched path (`BatchedScorer`) over all prompts at once, best of two."""
    import torch

    from radproto.model.cuda_scoring import BatchedScorer

    scorer = BatchedScorer(model, head, pad_token_id=0, max_batch_tokens=batch_tokens)
    scorer.log_probs(prompts[:64])  # warm-up
    torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(2):
        torch.cuda.synchronize()
        begin = time.perf_counter()
        scorer.log_probs(prompts)
        best = min(best, time.perf_counter() - begin)
    return {"burst_batch_tokens": batch_tokens, "burst_orders": len(prompts),
            "burst_orders_per_s": round(len(prompts) / best, 1),
            "burst_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="")
    p.add_argument("--orders", type=int, default=320)
    p.add_argument("--buckets", default="32,16")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--burst", type=int, default=8192,
                   help="batch tokens of a burst of all the orders (0: no burst)")
    p.add_argument("--no-compile", action="store_true",
                   help="leave RMSNorm, SwiGLU and RoPE eager (the service compiles them)")
    p.add_argument("--build-dir", default="/tmp/marlin_build")
    p.add_argument("--kernel-files", type=int, default=8)
    args = p.parse_args()

    import numpy as np
    import torch

    from radproto.model.head import _head_class
    from radproto.model.kernels import compile_elementwise

    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    arch = "{}.{}".format(*torch.cuda.get_device_capability())
    ops, build_s = build(Path(args.build_dir), args.kernel_files, arch, args.out)
    config = llama_config(vocab_size=49152)
    started = time.perf_counter()
    model = random_llama(config, device="cuda", dtype=torch.bfloat16).eval()
    sizes = convert(model, ops)
    if not args.no_compile:
        compile_elementwise(model)
    print(f"model ready in {time.perf_counter() - started:.0f} s; weight GB {sizes}",
          flush=True)
    head = _head_class()([f"protocol {i}" for i in range(N_PROTOCOLS)],
                         torch.randn(N_PROTOCOLS, config.hidden_size, device="cuda") * 0.02)
    lengths = json.loads(LENGTHS.read_text())["lengths"]
    rng = random.Random(0)
    prompts = [[rng.randrange(1, config.vocab_size) for _ in range(lengths[i % len(lengths)])]
               for i in range(args.orders)]
    rows, outputs = [], {}
    for mode in args.modes.split(","):
        set_mode(model, mode)
        for bucket in (int(b) for b in args.buckets.split(",")):
            row, out = time_lone_orders(model, head, prompts, bucket)
            row["mode"] = mode
            outputs[(mode, bucket)] = out
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.burst:
            row = {"mode": mode, **time_burst(model, head, prompts, args.burst)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    bursts = [r for r in rows if "burst_orders_per_s" in r]
    rows = [r for r in rows if "bucket" in r]
    for (mode, bucket), out in outputs.items():
        ref = outputs.get(("dense", bucket))
        if ref is None or mode == "dense":
            continue
        row = next(r for r in rows if r["mode"] == mode and r["bucket"] == bucket)
        row["max_abs_dp_vs_dense"] = float(np.abs(np.exp(out) - np.exp(ref)).max())
        row["top1_agree_vs_dense"] = float((out.argmax(1) == ref.argmax(1)).mean())
    print("\n| weights | bucket | lone order p50 ms | p95 ms | weight GB | vs dense: max |dp|, "
          "top-1 agree |\n|---|---|---|---|---|---|")
    for r in rows:
        agree = (f"{r['max_abs_dp_vs_dense']:.1e}, {r['top1_agree_vs_dense']:.0%}"
                 if "max_abs_dp_vs_dense" in r else "-")
        print(f"| {r['mode']} | {r['bucket']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{sizes[r['mode']]:.2f} | {agree} |")
    for r in bursts:
        print(f"burst, {r['mode']}: {r['burst_orders_per_s']} orders/s at "
              f"{r['burst_batch_tokens']} batch tokens, peak {r['burst_peak_gb']} GB "
              "(all three weight formats resident)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        env = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "arch": arch, "build_s": round(build_s, 1),
               "compiled_elementwise": not args.no_compile, "weight_gb": sizes}
        (Path(args.out) / "lone_order_probe.json").write_text(
            json.dumps({"environment": env, "results": rows, "bursts": bursts}, indent=1))


if __name__ == "__main__":
    main()
