"""Marlin int4 weights for the lone order on CUDA: the LoRA-folded 4-bit weight, re-quantised.

A lone order (~64 prompt tokens) is bound by bitsandbytes writing every dequantised bf16
weight to memory and reading it back: 15.3 ms of a 7B forward on an H100. Marlin (vLLM's
int4 GEMM, here gptqmodel's copy) reads the 4-bit weight once, dequantising in registers: the
same forward takes 8.4 ms (bench/lone_order_probe.py, bench/GPU_NOTES.md run 21), and the
service's lone order, LoRA and host work included, 11.7 ms instead of 19.2 (run 22). Its cost
grows with the tokens (at ~1,000 tokens it is slower than bitsandbytes), so only calls of at
most `max_tokens` tokens take it; batches keep the bitsandbytes path. The price is a second
copy of the weights (3.3 GB on a 7B).

At `prepare_for_serving(marlin_tokens=...)` every LoRA layer over a bitsandbytes 4-bit base
gets its weight dequantised, the LoRA delta added (W + scale * B @ A, so the adapter costs
nothing on this path), and the sum re-quantised to GPTQ's symmetric int4 (W ~ (q - 8) * s,
one bf16 scale per 128 weights along K, round to nearest) in Marlin's tile layout. The
re-quantisation adds rounding noise of the size NF4's own: on the shipped SmolLM2 model the
same step (groups of 64, its width is not a multiple of 128) left calibration-set top-1 as it
was (93.8% against 93.4%, the blend 94.4% either way; 98% of top-1 unchanged).

The kernel is compiled on the serving machine (`torch.utils.cpp_extension.load`, nvcc
needed; ~35 s on 16 cores, then cached in the build directory) from the CUDA sources of
gptqmodel 7.7.0: `pip install gptqmodel==7.7.0` on the GPU host, or point RADPROTO_MARLIN_SRC
at a `gptqmodel_ext/marlin` folder. Only what serving needs is built: the card's architecture
and the 15 tile shapes of bf16 x uint4b8 with groups of 128 (gptq_marlin.cu's kernel dispatch
rewritten to name only those).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radproto.model.errors import ModelError

log = logging.getLogger(__name__)

GROUP = 128
EXT_NAME = "radproto_marlin_bf16_u4b8_g128"
OPS_NAMESPACE = "gptqmodel_marlin_bf16"  # TORCH_LIBRARY in marlin_torch_bf16.cpp
GPTQMODEL_VERSION = "7.7.0"  # the sources the dispatch patch below was written against
SOURCE_ENV = "RADPROTO_MARLIN_SRC"

# Thread tiles (thread_k, thread_n, threads) and M blocks, as in gptqmodel_ext/marlin/
# generate_kernels.py: THREAD_CONFIGS, THREAD_M_BLOCKS (0.5 = m_block_size_8).
_THREAD_CONFIGS = [(128, 128, 256), (64, 256, 256), (64, 128, 128), (128, 64, 128)]
_THREAD_M_BLOCKS = [0.5, 1, 2, 3, 4]
_SOURCES = ["awq_marlin_repack.cu", "awq_marlin_repack.cuh", "dequant.h", "gptq_marlin.cuh",
            "gptq_marlin_bf16.cu", "gptq_marlin_repack.cu", "gptq_marlin_repack.cuh",
            "kernel.h", "marlin.cuh", "marlin_dtypes.cuh", "marlin_mma.h",
            "marlin_scratch.cuh", "marlin_template.h", "marlin_torch_bf16.cpp",
            "core/scalar_type.hpp"]


# ---------------------------------------------------------------------------- the int4 format
@dataclass
class Int4Weight:
    """A [N, K] weight as GPTQ symmetric 4-bit groups along K: W ~ (q - 8) * scale."""

    q: Any  # uint8 [N, K], 0..15
    scale: Any  # bfloat16 [N, K / group]
    group: int = GROUP

    @classmethod
    def quantize(cls, dense: Any, group: int = GROUP) -> Int4Weight:
        """Round to nearest with scale = max|w| / 7.5 per group (GPTQ's sym quantiser)."""
        import torch

        n, k = dense.shape
        if k % group:
            raise ModelError(f"a weight of {k} inputs is not a multiple of the group {group}")
        w = dense.float().reshape(n, k // group, group)
        scale = (w.abs().amax(-1, keepdim=True) * 2 / 15).clamp(min=1e-8)
        scale = scale.to(torch.bfloat16)  # rounded first: the kernel reads bf16 scales
        q = ((w / scale.float()).round() + 8).clamp(0, 15).to(torch.uint8).reshape(n, k)
        return cls(q, scale.reshape(n, -1), group)

    def dequantize(self) -> Any:
        """float32 [N, K]."""
        return (self.q.float() - 8) * self.scale.float().repeat_interleave(self.group, 1)

    def __call__(self, x: Any) -> Any:
        """x [M, K] -> [M, N] through the dequantised weight: the reference for what the
        Marlin GEMM computes (and the int4 path on a machine without it)."""
        import torch.nn.functional as F

        return F.linear(x, self.dequantize().to(x.dtype))

    def gptq_packed(self) -> Any:
        """GPTQ's qweight, int32 [K / 8, N]: row r holds inputs 8r..8r+7, 4 bits each, the
        lowest first (gptqmodel's pack_cols along K)."""
        import torch

        qt = self.q.t().contiguous().to(torch.int32)  # [K, N]
        packed = torch.zeros(qt.shape[0] // 8, qt.shape[1], dtype=torch.int32,
                             device=qt.device)
        for i in range(8):
            packed |= qt[i::8] << (4 * i)
        return packed


def uint4b8_id() -> int:
    """vllm ScalarType.uint(4, 8).id (gptqmodel/utils/marlin_scalar_type.py): exponent 0 (8
    bits), mantissa 4 (8), signed 0 (1), bias 8 (32), finite_values_only 0 (1), nan_repr
    IEEE_754 = 1 (8), packed from the low bits."""
    return 4 << 8 | 8 << 17 | 1 << 50


def permute_scales(scale_t: Any, size_k: int, size_n: int, group: int) -> Any:
    """[K / group, N] scales in Marlin's order (gptqmodel/utils/marlin.py)."""
    perm: list[int] = []
    for i in range(8):
        perm.extend([i + 8 * j for j in range(8)])
    single: list[int] = []
    for i in range(4):
        single.extend([2 * i + j for j in [0, 1, 8, 9, 16, 17, 24, 25]])
    if group < size_k:
        scale_t = scale_t.reshape((-1, len(perm)))[:, perm]
    else:
        scale_t = scale_t.reshape((-1, len(single)))[:, single]
    return scale_t.reshape((-1, size_n)).contiguous()


class MarlinWeight:
    """One linear layer's int4 weight in Marlin's layout, and its GEMM (gptqmodel's
    MarlinLinear.post_init and forward: repacked with an empty perm, permuted scales, empty
    g_idx / sort indices / zero points, K full, no atomics, float32 reduction)."""

    def __init__(self, ops: Any, weight: Int4Weight) -> None:
        import torch

        self.ops = ops
        self.n, self.k = weight.q.shape
        device = weight.q.device
        empty = torch.empty(0, dtype=torch.int32, device=device)
        self.qweight = ops.gptq_marlin_repack(weight.gptq_packed(), empty, self.k, self.n, 4)
        self.scales = permute_scales(weight.scale.t().contiguous(), self.k, self.n,
                                     weight.group)
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        self.workspace = torch.zeros(max(sms, 128), dtype=torch.int32, device=device)
        self.g_idx = self.perm = self.zeros = empty
        self.type_id = uint4b8_id()

    @property
    def gigabytes(self) -> float:
        return (self.qweight.numel() * 4 + self.scales.numel() * 2) / 1e9

    def __call__(self, x: Any, fp32_reduce: bool = True) -> Any:
        """x [M, K] bf16 -> [M, N]."""
        return self.ops.gptq_marlin_gemm_bf16(
            x, None, self.qweight, None, self.scales, None, self.zeros, self.g_idx, self.perm,
            self.workspace, self.type_id, x.shape[0], self.n, self.k, True, False, fp32_reduce,
            False)


# ---------------------------------------------------------------------------- the LoRA layers
def attach_int4(model: Any, make: Any, max_tokens: int, *, group: int = GROUP
                ) -> tuple[int, float]:
    """Give every LoRA layer that kernels.lean_lora patched over a 4-bit base an int4 copy of
    its folded weight, `make(Int4Weight)` (a MarlinWeight on CUDA; the Int4Weight itself is
    the reference), used for calls of at most `max_tokens` tokens. Returns (layers, GB of
    the copies)."""
    from radproto.model.kernels import folded_weight, lean_4bit_layers

    count, size = 0, 0.0
    for module in lean_4bit_layers(model):
        weight = Int4Weight.quantize(folded_weight(module), group)
        module._radproto_int4 = make(weight)
        module._radproto_int4_tokens = int(max_tokens)
        if count == 0:
            error = check_int4(module._radproto_int4, weight)
            log.info("int4 GEMM self-check on %s: relative error %.2g", type(module).__name__,
                     error)
        del weight  # the uint8 codes: twice the packed size
        size += getattr(module._radproto_int4, "gigabytes", 0.0)
        count += 1
    return count, size


def check_int4(gemm: Any, weight: Int4Weight, tokens: int = 16, limit: float = 2e-2) -> float:
    """One call of `gemm` against x @ the dequantised weight in float32: a wrong layout or a
    kernel built for another card fails the start here, not the radiologist's suggestion.
    Returns the relative error (bf16 rounding alone: ~2e-3)."""
    import torch

    device = weight.q.device
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, weight.q.shape[1], generator=generator, device=device)
    x = x.to(torch.bfloat16)  # what the kernel reads; the reference in float32
    with torch.no_grad():
        reference = weight(x.float())
        out = gemm(x).float()
    error = float((out - reference).abs().mean() / reference.abs().mean().clamp(min=1e-12))
    if not error < limit:  # NaN fails too
        raise ModelError(f"the int4 GEMM does not match its weights (relative error {error:.3g}"
                         f" against at most {limit}): not serving through it")
    return error


# ---------------------------------------------------------------------------- the kernel build
def marlin_sources() -> Path:
    """The `gptqmodel_ext/marlin` folder: RADPROTO_MARLIN_SRC, or the installed gptqmodel's
    (found through its distribution's files, without importing gptqmodel)."""
    from importlib import metadata

    candidates = []
    if os.environ.get(SOURCE_ENV):
        candidates.append(Path(os.environ[SOURCE_ENV]))
    try:
        dist = metadata.distribution("gptqmodel")
        candidates.append(Path(str(dist.locate_file("gptqmodel_ext/marlin"))))
    except metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if (path / "gptq_marlin.cu").is_file():
            return path
    raise ModelError(
        "marlin_tokens needs the Marlin CUDA sources of gptqmodel "
        f"{GPTQMODEL_VERSION}: `pip install gptqmodel=={GPTQMODEL_VERSION}` on this machine, "
        f"or set {SOURCE_ENV} to a gptqmodel_ext/marlin folder (looked in: "
        f"{', '.join(map(str, candidates)) or 'nothing'})")


def kernel_configs() -> list[tuple[int, int, int, int, bool]]:
    """(threads, thread_m_blocks, thread_n_blocks, thread_k_blocks, m_block_size_8) for every
    tile generate_kernels.py emits for one weight type and group (bf16: pipe_stages only);
    the 256-thread tiles only at m <= 1 (128 x 128) or m > 1 (64 x 256)."""
    out = []
    for m_blocks in _THREAD_M_BLOCKS:
        for thread_k, thread_n, threads in _THREAD_CONFIGS:
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
  // radproto model/marlin.py: only bf16 x uint4b8, group {GROUP}, no act-order/zp
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
    """Keeps mtimes (and so ninja's objects) when a later start writes the same sources."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def prepare_sources(source: Path, build_dir: Path, kernel_files: int = 8) -> list[str]:
    """The sources copied to build_dir/src, gptq_marlin.cu's dispatch restricted and the
    kernel instantiations split over kernel_files files (compiled in parallel); returns the
    list for `load`."""
    src = build_dir / "src"
    (src / "core").mkdir(parents=True, exist_ok=True)
    for name in _SOURCES:
        _write_if_changed(src / name, (source / name).read_text())
    gemm = (source / "gptq_marlin.cu").read_text()
    start_mark = "template <typename scalar_t>\nMarlinFuncPtr get_marlin_kernel("
    end_mark = "  return kernel;\n}\n"
    if gemm.count(start_mark) != 1:
        raise ModelError(f"{source / 'gptq_marlin.cu'}: get_marlin_kernel not found once; "
                         f"radproto builds the sources of gptqmodel {GPTQMODEL_VERSION}")
    start = gemm.index(start_mark)
    end = gemm.index(end_mark, start) + len(end_mark)
    configs = kernel_configs()
    _write_if_changed(src / "gptq_marlin.cu", gemm[:start] + _dispatch(configs) + gemm[end:])
    head = ('// written by radproto model/marlin.py (as generate_kernels.py would, '
            'restricted)\n#include "kernel.h"\n#include "marlin_template.h"\n\n'
            'namespace MARLIN_NAMESPACE_NAME {\n\n')
    kernels = []
    for i in range(kernel_files):
        part = configs[i::kernel_files]
        if part:
            path = src / f"kernel_bf16_ku4b8_g{GROUP}_{i}.cu"
            _write_if_changed(path, head + "\n".join(map(_instantiation, part)) + "\n\n}\n")
            kernels.append(str(path))
    for stale in src.glob("kernel_*.cu"):
        if str(stale) not in kernels:
            stale.unlink()
    return [str(src / "marlin_torch_bf16.cpp"), str(src / "gptq_marlin_bf16.cu"),
            str(src / "gptq_marlin_repack.cu"), str(src / "awq_marlin_repack.cu"), *kernels]


def build_flags() -> tuple[list[str], list[str]]:
    """gptqmodel/utils/marlin.py's host and CUDA flags (through gptqmodel/utils/cpp.py's
    defaults: bf16 on, ptxas -O3 -dlcm=ca, compressed fatbin), for nvcc >= 12.8."""
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


def _cuda_header_fallback(cuda_home: str | None) -> list[str]:
    """ATen/cuda/CUDAContext.h needs cublas_v2.h, cusparse.h and cusolverDn.h: where CUDA_HOME
    lacks them, the NVIDIA wheels' include folders (as gptqmodel/utils/cpp.py does)."""
    roots = [Path(cuda_home) / "include", Path(cuda_home) / "targets/x86_64-linux/include"] \
        if cuda_home else []
    if any((r / "cublas_v2.h").is_file() and (r / "cusparse.h").is_file() for r in roots):
        return []
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return []
    return sorted({str(p) for base in getattr(nvidia, "__path__", [])
                   for p in Path(base).glob("*/include") if p.is_dir()})


def default_build_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "radproto" / \
        "marlin"


def load_ops(build_dir: Path | None = None, *, source: Path | None = None,
             kernel_files: int = 8) -> tuple[Any, float]:
    """Compile (or reuse) and load the kernel; returns (torch.ops namespace, seconds)."""
    import torch
    from torch.utils import cpp_extension

    if hasattr(torch.ops, OPS_NAMESPACE) and \
            hasattr(getattr(torch.ops, OPS_NAMESPACE), "gptq_marlin_gemm_bf16"):
        return getattr(torch.ops, OPS_NAMESPACE), 0.0  # loaded earlier in this process
    if not torch.cuda.is_available():
        raise ModelError("Marlin needs a CUDA device")
    build_dir = build_dir or default_build_dir()
    sources = prepare_sources(source or marlin_sources(), build_dir, kernel_files)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST",
                          "{}.{}".format(*torch.cuda.get_device_capability()))
    cflags, cuda_cflags = build_flags()
    (build_dir / "obj").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        cpp_extension.load(name=EXT_NAME, sources=sources, extra_cflags=cflags,
                           extra_cuda_cflags=cuda_cflags,
                           extra_include_paths=[str(build_dir / "src"),
                                                *_cuda_header_fallback(cpp_extension.CUDA_HOME)],
                           build_directory=str(build_dir / "obj"), is_python_module=False,
                           verbose=False)
    except Exception as exc:  # the compiler's own message, shortened, is what helps
        lines = [line for line in str(exc).splitlines() if "error" in line][:10]
        log.error("Marlin build failed:\n%s", "\n".join(lines))
        raise ModelError(f"the Marlin kernel did not build in {build_dir}: "
                         f"{type(exc).__name__}") from exc
    return getattr(torch.ops, OPS_NAMESPACE), time.perf_counter() - started


def marlin_lora(model: Any, max_tokens: int, *, build_dir: Path | None = None
                ) -> dict[str, float]:
    """Serve calls of at most `max_tokens` tokens through Marlin (see the module's text);
    returns what it cost: build seconds, layers, GB. A model without LoRA layers over a
    4-bit base has nothing to convert: no build, a warning."""
    from radproto.model.kernels import lean_4bit_layers

    if not lean_4bit_layers(model):
        log.warning("marlin_tokens is set but the model has no LoRA layer over a 4-bit base: "
                    "nothing served through Marlin")
        return {"build_s": 0.0, "layers": 0, "gb": 0.0}
    ops, build_s = load_ops(build_dir)
    layers, size = attach_int4(model, lambda w: MarlinWeight(ops, w), max_tokens)
    return {"build_s": build_s, "layers": layers, "gb": size}
