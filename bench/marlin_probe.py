"""Probe: gptqmodel's Marlin int4 kernel against bitsandbytes NF4 and dense bf16 on one CUDA card.

For the linear shapes of a Llama-2-7B layer (bench/int4_probe.py's LLAMA_7B_LAYER) and a range
of token counts (96 is the one that matters: a lone order is ~96 tokens), times

- Marlin (gptqmodel 7.7.0's copy of vLLM's Marlin, `gptq_marlin_gemm`): bf16 activations x
  GPTQ symmetric int4 weights (`uint4b8`: W ~ (q - 8) * scale), groups of 128 along K, no
  act-order, no zero points, fp32 global reduction (gptqmodel's default) and bf16 reduction;
  fed with the NF4 weight re-quantised (what the service would load);
- bitsandbytes' Linear4bit forward (NF4, the service's path), same weights and seed as
  int4_probe;
- dense bf16 (the floor; 13 GB resident, not an option within 5 GB).

The Marlin extension is compiled on the card with `torch.utils.cpp_extension.load` from the
CUDA sources carried in `.gptq/gptqmodel_ext/marlin/` (git-ignored; make it with
the sdist's URL from https://pypi.org/simple/gptqmodel/ (pip download fails building its
metadata on a machine without CUDA), then `tar xzf gptqmodel-7.7.0.tar.gz && mkdir -p .gptq
&& cp -r gptqmodel-7.7.0/gptqmodel_ext .gptq/`; the fp16 and shipped kernel_*_ku8.cu files may
be left out), restricted to what this probe needs so the build fits one device call:
only the card's architecture (TORCH_CUDA_ARCH_LIST, 9.0 on an H100), only the bf16 sources,
and only the 15 kernel template instantiations for bf16 x uint4b8 with group_blocks 8
(group 128), one per thread tile gptq_marlin.cu's dispatch can choose; the dispatch
(`get_marlin_kernel`) is rewritten to name only those, so nothing links against kernels left
out. Patched sources and objects go to --build-dir (/tmp/marlin_build; a second call on the
same warm machine reuses them).

Each shape's Marlin GEMM is first checked against x @ the dequantised int4 weight (relative
error ~1e-3 expected; above 5e-2 the row says check_ok false and the exit status is 3). Each
timing is one call's median inside a CUDA graph of 10 calls (int4_probe's `_time_ms`). Prints
JSON rows and a per-forward summary (32 layers x 7 linears); `--out DIR` writes
marlin_probe.json (and marlin_build.log when the build fails).

Device command (carry `.gptq` and `.bnb_slim`; ~1-3 min build, then the timings):

    bash bench/gpu_card/setup.sh && \
        PYTHONPATH=$PWD:/tmp/site python3 -m bench.marlin_probe --out $OUT

`--build-only` stops after the build; `--print-build` (no GPU needed) writes the patched
sources and prints the sources and flags passed to `load`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.int4_probe import (
    LLAMA_7B_LAYER,
    _time_ms,
    baseline_row,
    nf4_layer,
    print_per_forward,
)
from radproto.model.marlin import (
    SOURCE_ENV,
    Int4Weight,
    MarlinWeight,
    build_flags,
    kernel_configs,
    prepare_sources,
)

ROOT = Path(__file__).resolve().parents[1]
MARLIN_SRC = ROOT / ".gptq" / "gptqmodel_ext" / "marlin"
TOKENS = [1, 16, 96, 256, 1024, 8192]
CHECK_TOKENS = 96
CHECK_LIMIT = 5e-2


def build(build_dir: Path, kernel_files: int, arch: str, out_dir: str) -> tuple[Any, float]:
    """model/marlin.py's build from the carried sources (or RADPROTO_MARLIN_SRC); exits 2
    with the error when it fails."""
    from radproto.model.errors import ModelError
    from radproto.model.marlin import SOURCE_ENV, kernel_configs, load_ops

    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    os.environ.setdefault("MAX_JOBS", "16")
    source = Path(os.environ.get(SOURCE_ENV) or MARLIN_SRC)
    if not (source / "gptq_marlin.cu").is_file():
        sys.exit(f"no Marlin sources at {source}: carry .gptq (see the docstring)")
    print(f"building: arch {arch}, MAX_JOBS {os.environ['MAX_JOBS']}, "
          f"{len(kernel_configs())} kernel instantiations in {kernel_files} files", flush=True)
    try:
        ops, seconds = load_ops(build_dir, source=source, kernel_files=kernel_files)
    except ModelError as exc:
        cause = f"{exc}: {exc.__cause__}"
        print(f"BUILD FAILED: {cause[-6000:]}", flush=True)
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "marlin_build.log").write_text(cause)
        sys.exit(2)
    print(f"build_s {seconds:.1f}", flush=True)
    return ops, seconds


def check(marlin: MarlinWeight, int4: Int4Weight, dense: Any, m: int) -> dict[str, Any]:
    """One GEMM against x @ the dequantised int4 weight (float32 reference)."""
    import torch

    x = torch.randn(m, marlin.k, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        w = int4.dequantize()
        ref = x.float() @ w.t()
        out = marlin(x).float()
        out_bf16_reduce = marlin(x, fp32_reduce=False).float()
        bf16_matmul = (x @ w.to(torch.bfloat16).t()).float()
    scale = float(ref.abs().mean())
    row = {"check": True, "tokens": m, "out": marlin.n, "in": marlin.k,
           "marlin_vs_dequant_rel_err": float((out - ref).abs().mean()) / scale,
           "marlin_vs_dequant_max_abs": float((out - ref).abs().max()),
           "marlin_bf16_reduce_vs_dequant_rel_err":
               float((out_bf16_reduce - ref).abs().mean()) / scale,
           "bf16_matmul_vs_dequant_rel_err":  # what bf16 rounding alone costs
               float((bf16_matmul - ref).abs().mean()) / scale,
           "sym4_weight_rel_err":  # the re-quantisation of the NF4 weight
               float((w - dense.float()).abs().mean()) / float(dense.float().abs().mean())}
    row["check_ok"] = bool(row["marlin_vs_dequant_rel_err"] < CHECK_LIMIT
                           and torch.isfinite(out).all())
    return row


def _measure(layer: Any, dense: Any, marlin: MarlinWeight | None, m: int) -> dict[str, Any]:
    import torch

    x, rel_err, row = baseline_row(layer, dense, m)
    if marlin is None:
        return row
    with torch.inference_mode():
        try:  # against the NF4 layer, so it includes the re-quantisation
            row["marlin_rel_err"] = rel_err(marlin(x))
            row["marlin_ms"] = _time_ms(lambda: marlin(x))
            row["marlin_bf16_reduce_ms"] = _time_ms(lambda: marlin(x, fp32_reduce=False))
        except Exception as exc:  # a probe records what failed
            row["marlin_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--skip-build-check", action="store_true",
                   help="skip each shape's Marlin-vs-dequantised-weight check (timings only)")
    p.add_argument("--build-dir", default="/tmp/marlin_build")
    p.add_argument("--kernel-files", type=int, default=8,
                   help="files the 15 instantiations are split over (compiled in parallel)")
    p.add_argument("--arch", default="", help="TORCH_CUDA_ARCH_LIST (default: the card's)")
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--print-build", action="store_true",
                   help="write the patched sources, print sources and flags, exit (no GPU)")
    args = p.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    build_dir = Path(args.build_dir)
    if args.print_build:
        source = Path(os.environ.get(SOURCE_ENV) or MARLIN_SRC)
        sources = prepare_sources(source, build_dir, args.kernel_files)
        cflags, cuda_cflags = build_flags()
        print(json.dumps({"sources": sources, "extra_cflags": cflags,
                          "extra_cuda_cflags": cuda_cflags,
                          "extra_include_paths": [str(build_dir / "src")],
                          "instantiations": len(kernel_configs())}, indent=1))
        return

    import bitsandbytes as bnb
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    arch = args.arch or "{}.{}".format(*torch.cuda.get_device_capability())
    ops, build_s = build(build_dir, args.kernel_files, arch, args.out)
    if args.build_only:
        return
    torch.manual_seed(0)  # as int4_probe: the same NF4 weights, layer by layer
    results: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for n, k, count in LLAMA_7B_LAYER:
        layer, dense = nf4_layer(n, k)
        int4 = Int4Weight.quantize(dense)
        try:
            marlin: MarlinWeight | None = MarlinWeight(ops, int4)
        except Exception as exc:
            print(f"marlin weight {n}x{k}: {type(exc).__name__}: {exc}"[:400], flush=True)
            marlin = None
        if marlin is not None and not args.skip_build_check:
            try:
                row = check(marlin, int4, dense, CHECK_TOKENS)
            except Exception as exc:
                row = {"check": True, "out": n, "in": k, "check_ok": False,
                       "error": f"{type(exc).__name__}: {exc}"[:400]}
            checks.append(row)
            print(json.dumps(row), flush=True)
            if not row["check_ok"]:
                print(f"MARLIN CHECK FAILED for {n}x{k}: timings kept, results suspect",
                      flush=True)
        for m in tokens:
            row = _measure(layer, dense, marlin, m)
            row["per_layer"] = count
            results.append(row)
            print(json.dumps(row), flush=True)
        del layer, dense, marlin, int4
        torch.cuda.empty_cache()
    print_per_forward(results, tokens)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        env = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "bitsandbytes": bnb.__version__,
               "gptqmodel_marlin": "7.7.0 sdist, bf16 x uint4b8 g128 only", "arch": arch,
               "build_s": round(build_s, 1), "instantiations": len(kernel_configs())}
        (Path(args.out) / "marlin_probe.json").write_text(
            json.dumps({"environment": env, "checks": checks, "results": results}, indent=1))
    if any(not c["check_ok"] for c in checks):
        sys.exit(3)


if __name__ == "__main__":
    main()
