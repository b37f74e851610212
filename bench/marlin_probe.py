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
import time
from pathlib import Path
from typing import Any

from bench.int4_probe import (
    LLAMA_7B_LAYER,
    _time_ms,
    baseline_row,
    nf4_layer,
    print_per_forward,
)

ROOT = Path(__file__).resolve().parents[1]
MARLIN_SRC = ROOT / ".gptq" / "gptqmodel_ext" / "marlin"
TOKENS = [1, 16, 96, 256, 1024, 8192]
GROUP = 128
EXT_NAME = "radproto_marlin_bf16_u4b8_g128"
OPS_NAMESPACE = "gptqmodel_marlin_bf16"  # TORCH_LIBRARY in marlin_torch_bf16.cpp
CHECK_TOKENS = 96
CHECK_LIMIT = 5e-2

# Thread tiles (thread_k, thread_n, threads) and M blocks, as in gptqmodel_ext/marlin/
# generate_kernels.py: THREAD_CONFIGS, THREAD_M_BLOCKS (0.5 = m_block_size_8).
THREAD_CONFIGS = [(128, 128, 256), (64, 256, 256), (64, 128, 128), (128, 64, 128)]
THREAD_M_BLOCKS = [0.5, 1, 2, 3, 4]


def kernel_configs() -> list[tuple[int, int, int, int, bool]]:
    """(threads, thread_m_blocks, thread_n_blocks, thread_k_blocks, m_block_size_8) for every
    tile generate_kernels.py emits for one weight type and group size (bf16: pipe_stages
    only); the 256-thread tiles only at m <= 1 (128 x 128) or m > 1 (64 x 256)."""
    out = []
    for m_blocks in THREAD_M_BLOCKS:
        for thread_k, thread_n, threads in THREAD_CONFIGS:
            if threads == 256 and (m_blocks <= 1) != (thread_k == 128):
                continue
            out.append((threads, max(int(m_blocks), 1), thread_n // 16, thread_k // 16,
                        m_blocks == 0.5))
    return out


def _instantiation(cfg: tuple[int, int, int, int, bool]) -> str:
    threads, m, n, k, m8 = cfg
    return ("template __global__ void Marlin<nv_bfloat16, vllm::kU4B8.id(), "
            f"vllm::kBFloat16.id(), {threads}, {m}, {n}, {k}, {str(m8).lower()}, pipe_stages, "
            f"{GROUP // 16}, false>( MARLIN_KERNEL_PARAMS );")


def _dispatch(configs: list[tuple[int, int, int, int, bool]]) -> str:
    """get_marlin_kernel naming only the compiled instantiations (gptq_marlin.cu's _GET_IF)."""
    cases = "\n".join(
        f"      _GET_IF(vllm::kU4B8, {m}, {n}, {k}, {str(m8).lower()}, pipe_stages, "
        f"{GROUP // 16}, {threads}, false)" for threads, m, n, k, m8 in configs)
    return f"""template <typename scalar_t>
MarlinFuncPtr get_marlin_kernel(const vllm::ScalarType q_type,
                                int thread_m_blocks, int thread_n_blocks,
                                int thread_k_blocks, bool m_block_size_8,
                                bool has_act_order, bool has_zp,
                                int group_blocks, int num_threads,
                                bool is_zp_float, int stages) {{
  // radproto bench/marlin_probe.py: only bf16 x uint4b8, group {GROUP}, no act-order/zp
  auto kernel = MarlinDefault;
  if constexpr (std::is_same<scalar_t, nv_bfloat16>::value) {{
    if (stages == pipe_stages) {{
      if (false) {{
      }}
{cases}
    }}
  }}
  return kernel;
}}
"""


def _write_if_changed(path: Path, text: str) -> None:
    """Keeps mtimes (and so ninja's objects) when a later call writes the same sources."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def prepare_sources(build_dir: Path, kernel_files: int) -> list[str]:
    """Copies the carried Marlin sources to build_dir/src, restricts gptq_marlin.cu's dispatch
    and writes the kernel instantiations split over kernel_files files (compiled in
    parallel); returns the source list for `load`."""
    if not (MARLIN_SRC / "gptq_marlin.cu").is_file():
        sys.exit(f"no Marlin sources at {MARLIN_SRC}: carry .gptq (see the docstring)")
    src = build_dir / "src"
    (src / "core").mkdir(parents=True, exist_ok=True)
    names = ["awq_marlin_repack.cu", "awq_marlin_repack.cuh", "dequant.h", "gptq_marlin.cuh",
             "gptq_marlin_bf16.cu", "gptq_marlin_repack.cu", "gptq_marlin_repack.cuh",
             "kernel.h", "marlin.cuh", "marlin_dtypes.cuh", "marlin_mma.h",
             "marlin_scratch.cuh", "marlin_template.h", "marlin_torch_bf16.cpp",
             "core/scalar_type.hpp"]
    for name in names:
        _write_if_changed(src / name, (MARLIN_SRC / name).read_text())
    gemm = (MARLIN_SRC / "gptq_marlin.cu").read_text()
    start_mark = "template <typename scalar_t>\nMarlinFuncPtr get_marlin_kernel("
    end_mark = "  return kernel;\n}\n"
    if gemm.count(start_mark) != 1:
        sys.exit("gptq_marlin.cu: get_marlin_kernel not found once; the dispatch patch needs "
                 "updating for this gptqmodel version")
    start = gemm.index(start_mark)
    end = gemm.index(end_mark, start) + len(end_mark)
    configs = kernel_configs()
    _write_if_changed(src / "gptq_marlin.cu", gemm[:start] + _dispatch(configs) + gemm[end:])
    head = ('// written by bench/marlin_probe.py (as generate_kernels.py would, restricted)\n'
            '#include "kernel.h"\n#include "marlin_template.h"\n\n'
            'namespace MARLIN_NAMESPACE_NAME {\n\n')
    kernels = []
    for i in range(kernel_files):
        part = configs[i::kernel_files]
        if not part:
            continue
        path = src / f"kernel_bf16_ku4b8_g{GROUP}_{i}.cu"
        _write_if_changed(path, head + "\n".join(map(_instantiation, part)) + "\n\n}\n")
        kernels.append(str(path))
    for stale in src.glob("kernel_*.cu"):
        if str(stale) not in kernels:
            stale.unlink()
    return [str(src / "marlin_torch_bf16.cpp"), str(src / "gptq_marlin_bf16.cu"),
            str(src / "gptq_marlin_repack.cu"), str(src / "awq_marlin_repack.cu"), *kernels]


def build_flags() -> tuple[list[str], list[str]]:
    """gptqmodel/utils/marlin.py's _marlin_extra_cflags / _marlin_extra_cuda_cflags (through
    gptqmodel/utils/cpp.py's default_jit_cflags(enable_bf16=True) and default_jit_cuda_cflags
    with lineinfo, nvcc threads, ptxas -O3 -dlcm=ca, fatbin compression, diag-suppress), for
    nvcc >= 12.8 and torch < 2.14 (c++17)."""
    import torch

    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(getattr(torch._C, '_GLIBCXX_USE_CXX11_ABI', 1))}"
    major_minor = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    std = "-std=c++20" if major_minor >= (2, 14) else "-std=c++17"
    cflags = ["-O3", std, "-DENABLE_BF16", abi]
    cuda = ["-static-global-template-stub=false", *cflags,
            "--threads", os.environ.get("NVCC_THREADS", "8"), "--optimize=3",
            "-Xptxas", "-O3,-dlcm=ca", "-lineinfo", "-Xfatbin", "-compress-all",
            "-diag-suppress=179,39,177"]
    return cflags, cuda


def cuda_header_fallback(cuda_home: str | None) -> list[str]:
    """ATen/cuda/CUDAContext.h (included by the gemm and repack sources) needs cublas_v2.h,
    cusparse.h and cusolverDn.h: when CUDA_HOME lacks them, the NVIDIA wheels' include
    folders, as gptqmodel/utils/cpp.py's cuda_include_paths_with_fallback."""
    roots = [Path(cuda_home) / "include", Path(cuda_home) / "targets/x86_64-linux/include"] \
        if cuda_home else []
    if any((r / "cublas_v2.h").is_file() and (r / "cusparse.h").is_file() for r in roots):
        return []
    try:
        import nvidia  # type: ignore[import-not-found]
    except Exception:
        print("warning: no cuBLAS/cuSPARSE headers under CUDA_HOME and no nvidia wheels",
              flush=True)
        return []
    found = sorted({str(p) for base in getattr(nvidia, "__path__", [])
                    for p in Path(base).glob("*/include") if p.is_dir()})
    print(f"CUDA headers from the nvidia wheels: {found}", flush=True)
    return found


def build(build_dir: Path, kernel_files: int, arch: str, verbose: bool,
          out_dir: str) -> tuple[Any, float]:
    """Compiles and loads the extension; returns (torch.ops namespace, seconds). Exits 2 with
    the compiler's error lines and output tail when the build fails."""
    import torch
    from torch.utils import cpp_extension

    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    os.environ.setdefault("MAX_JOBS", "16")
    sources = prepare_sources(build_dir, kernel_files)
    cflags, cuda_cflags = build_flags()
    obj = build_dir / "obj"
    obj.mkdir(parents=True, exist_ok=True)
    print(f"building {EXT_NAME}: arch {arch}, MAX_JOBS {os.environ['MAX_JOBS']}, "
          f"{len(kernel_configs())} kernel instantiations in {len(sources) - 4} files, "
          f"CUDA_HOME {cpp_extension.CUDA_HOME}", flush=True)
    started = time.perf_counter()
    try:
        cpp_extension.load(name=EXT_NAME, sources=sources, extra_cflags=cflags,
                           extra_cuda_cflags=cuda_cflags,
                           extra_include_paths=[str(build_dir / "src"),
                                                *cuda_header_fallback(cpp_extension.CUDA_HOME)],
                           build_directory=str(obj), is_python_module=False, verbose=verbose)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        errors = [line for line in text.splitlines()
                  if " error" in line or "error:" in line or "undefined symbol" in line]
        print(f"BUILD FAILED after {time.perf_counter() - started:.1f} s", flush=True)
        print("\n".join(errors[:40]))
        print("---- tail ----\n" + text[-6000:], flush=True)
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "marlin_build.log").write_text(text)
        sys.exit(2)
    seconds = time.perf_counter() - started
    print(f"build_s {seconds:.1f}", flush=True)
    return getattr(torch.ops, OPS_NAMESPACE), seconds


def uint4b8_id() -> int:
    """vllm ScalarType.uint(4, 8).id (gptqmodel/utils/marlin_scalar_type.py): exponent 0 (8
    bits), mantissa 4 (8), signed 0 (1), bias 8 (32), finite_values_only 0 (1), nan_repr
    IEEE_754 = 1 (8), packed from the low bits."""
    return 4 << 8 | 8 << 17 | 1 << 50  # 1125899907892224


def get_scale_perms() -> tuple[list[int], list[int]]:
    """Copied from gptqmodel/utils/marlin.py."""
    scale_perm: list[int] = []
    for i in range(8):
        scale_perm.extend([i + 8 * j for j in range(8)])
    scale_perm_single: list[int] = []
    for i in range(4):
        scale_perm_single.extend([2 * i + j for j in [0, 1, 8, 9, 16, 17, 24, 25]])
    return scale_perm, scale_perm_single


def marlin_permute_scales(s: Any, size_k: int, size_n: int, group_size: int) -> Any:
    """Copied from gptqmodel/utils/marlin.py (list indices instead of its cached tensors)."""
    scale_perm, scale_perm_single = get_scale_perms()
    if group_size < size_k and group_size != -1:
        s = s.reshape((-1, len(scale_perm)))[:, scale_perm]
    else:
        s = s.reshape((-1, len(scale_perm_single)))[:, scale_perm_single]
    return s.reshape((-1, size_n)).contiguous()


def sym4(dense: Any, group: int) -> tuple[Any, Any]:
    """GPTQ symmetric 4-bit groups (round to nearest, as GPTQ's Quantizer with sym=True):
    W ~ (q - 8) * scale, scale = max|w| / 7.5 per group; q uint8 [N, K] in 0..15, scale
    float [N, K / group]. (int4_probe's uniform4 is asymmetric with zero points: a kU4 +
    zero-point Marlin kernel, not the uint4b8 one built here.)"""
    import torch

    n, k = dense.shape
    w = dense.float().reshape(n, k // group, group)
    scale = (w.abs().amax(-1, keepdim=True) * 2 / 15).clamp(min=1e-8)
    q = ((w / scale).round() + 8).clamp(0, 15).to(torch.uint8).reshape(n, k)
    return q, scale.reshape(n, -1)


def gptq_pack(q: Any) -> Any:
    """GPTQ qweight [K / 8, N] int32: row r holds K rows 8r..8r+7 of q.T, 4 bits each, low
    first (gptqmodel/utils/marlin.py's pack_cols along K)."""
    import torch

    qt = q.t().contiguous().to(torch.int32)  # [K, N]
    packed = torch.zeros(qt.shape[0] // 8, qt.shape[1], dtype=torch.int32, device=q.device)
    for i in range(8):
        packed |= qt[i::8] << (4 * i)
    return packed


class MarlinWeight:
    """One linear layer's weight in Marlin's layout, and its GEMM (the calling sequence of
    gptqmodel's MarlinLinear.post_init and forward: repack with an empty perm, permuted
    scales, empty g_idx / sort indices / zero points, is_k_full, no atomics)."""

    def __init__(self, ops: Any, dense: Any, group: int = GROUP) -> None:
        import torch

        self.ops, dev = ops, dense.device
        self.n, self.k = dense.shape
        q, scale = sym4(dense, group)
        scale = scale.to(torch.bfloat16)  # what the kernel reads
        self.q, self.scale, self.group = q, scale, group
        empty = torch.empty(0, dtype=torch.int32, device=dev)
        self.qweight = ops.gptq_marlin_repack(gptq_pack(q), empty, self.k, self.n, 4)
        self.scales = marlin_permute_scales(scale.t().contiguous(), self.k, self.n, group)
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        self.workspace = torch.zeros(max(sms, 128), dtype=torch.int32, device=dev)
        self.g_idx, self.perm, self.zeros = empty, empty, empty
        self.type_id = uint4b8_id()

    def dequant(self) -> Any:
        """The int4 weight as float32 [N, K]: (q - 8) * scale."""
        return (self.q.float() - 8) * self.scale.float().repeat_interleave(self.group, 1)

    def __call__(self, x: Any, fp32_reduce: bool = True) -> Any:
        return self.ops.gptq_marlin_gemm_bf16(
            x, None, self.qweight, None, self.scales, None, self.zeros, self.g_idx, self.perm,
            self.workspace, self.type_id, x.shape[0], self.n, self.k, True, False, fp32_reduce,
            False)


def check(marlin: MarlinWeight, dense: Any, m: int) -> dict[str, Any]:
    """One GEMM against x @ the dequantised int4 weight (float32 reference)."""
    import torch

    x = torch.randn(m, marlin.k, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        w = marlin.dequant()
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
    p.add_argument("--verbose-build", action="store_true")
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--print-build", action="store_true",
                   help="write the patched sources, print sources and flags, exit (no GPU)")
    args = p.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    build_dir = Path(args.build_dir)
    if args.print_build:
        sources = prepare_sources(build_dir, args.kernel_files)
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
    ops, build_s = build(build_dir, args.kernel_files, arch, args.verbose_build, args.out)
    if args.build_only:
        return
    torch.manual_seed(0)  # as int4_probe: the same NF4 weights, layer by layer
    results: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for n, k, count in LLAMA_7B_LAYER:
        layer, dense = nf4_layer(n, k)
        try:
            marlin: MarlinWeight | None = MarlinWeight(ops, dense)
        except Exception as exc:
            print(f"marlin weight {n}x{k}: {type(exc).__name__}: {exc}"[:400], flush=True)
            marlin = None
        if marlin is not None and not args.skip_build_check:
            try:
                row = check(marlin, dense, CHECK_TOKENS)
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
        del layer, dense, marlin
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
