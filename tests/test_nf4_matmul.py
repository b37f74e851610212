"""The fused NF4 GEMM (model/nf4_matmul.py) run by Triton's CPU interpreter against
bitsandbytes' own dequantisation (bitsandbytes runs NF4 on CPU too).

The interpreter must be switched on before Triton is imported and Triton is not part of the
CPU venv's torch, so each check runs in a subprocess with `TRITON_INTERPRET=1` and the
Triton that `make venv` puts in .venv/triton. The interpreter mishandles bf16 (numpy has
none), so these run float32 and float16; the card checks bf16 (bench/nf4_bench.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_DIR = ROOT / ".venv" / "triton"


def run_interpreted(code: str, tmp_path: Path) -> str:
    assert (TRITON_DIR / "triton").is_dir(), \
        f"Triton is missing from {TRITON_DIR}: run `make venv` (it installs it there)"
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(TRITON_DIR), str(ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_kernel_equals_bitsandbytes_dequantisation(tmp_path):
    """Both absmax layouts (double-quantised or not), rows and columns that do not fill a
    tile, a bias, two dtypes, and the tile variants: K split over programs (float32 partial
    sums), the nibbles joined back into K order or run as two dots."""
    out = run_interpreted("""
        import torch, bitsandbytes.functional as F
        from radproto.model import nf4_matmul

        torch.manual_seed(0)
        CONFIGS = [None,  # tile_config's choice
                   {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCKS_PER_STEP": 1, "SPLIT_K": 2,
                    "INTERLEAVE": 0},
                   {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCKS_PER_STEP": 2, "SPLIT_K": 3,
                    "INTERLEAVE": 1}]
        checked = 0
        for nested in (True, False):
            for n, k, m in [(96, 128, 5), (200, 576, 40), (72, 320, 70)]:
                weight = torch.randn(n, k) * 0.1
                packed, state = F.quantize_4bit(weight, blocksize=64, quant_type="nf4",
                                                compress_statistics=nested)
                param = torch.nn.Parameter(packed, requires_grad=False)
                param.quant_state = state
                assert nf4_matmul.supported(param)
                dense = F.dequantize_4bit(packed, state)
                bias = torch.randn(n)
                for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
                    x = torch.randn(2, m, k).to(dtype)  # [batch, tokens, in]
                    want = x.float() @ dense.t() + bias
                    for config in CONFIGS:
                        got = nf4_matmul.nf4_linear(x, param, bias.to(dtype), config=config)
                        assert got.shape == (2, m, n) and got.dtype == dtype
                        err = (got.float() - want).abs().max().item()
                        assert err <= tol * want.abs().max().item(), \
                            (nested, n, k, m, dtype, config, err)
                        checked += 1
                # the 4-bit values matter: another weight gives another product
                other = F.dequantize_4bit(*F.quantize_4bit(weight.flip(0), blocksize=64,
                                                           quant_type="nf4"))
                assert (x.float() @ other.t() + bias - want).abs().max() > 0.1
        print("CHECKED", checked)
        """, tmp_path)
    assert "CHECKED 36" in out


def test_fused_nf4_scores_a_4bit_model_like_bitsandbytes_below_its_threshold(tmp_path):
    """kernels.fused_nf4 on a NF4 Llama with LoRA: the same log-probabilities as
    bitsandbytes' dequantise-then-GEMM, only for calls between 2 tokens and the threshold,
    never while training, and undone by 0."""
    out = run_interpreted(f"""
        import numpy as np, torch
        from test_train_support import random_prompts, with_lora, write_tiny_base
        from radproto.model import kernels, nf4_matmul
        from radproto.model.catalog import default_catalog
        from radproto.model.cuda_scoring import BatchedScorer
        from radproto.model.head import new_head
        from radproto.model.loading import ModelConfig, load_base_model

        base = write_tiny_base(__import__("pathlib").Path({str(tmp_path / "base")!r}))
        model, tokenizer = load_base_model(ModelConfig(base_model=str(base),
                                                       quantization="nf4"), "cpu")
        model = with_lora(model).eval()
        kernels.lean_lora(model)
        head = new_head(model, tokenizer, default_catalog().names)
        prompts = random_prompts(26, 6, vocab=model.get_input_embeddings().weight.shape[0])
        pad = tokenizer.pad_token_id
        plain = BatchedScorer(model, head, pad).log_probs(prompts)

        calls = []
        original = nf4_matmul.nf4_linear
        nf4_matmul.nf4_linear = lambda x, *a, **k: calls.append(x.shape) or original(x, *a, **k)
        assert kernels.fused_nf4(model, 10_000) == 14  # 7 targets x 2 layers, all NF4
        fused = BatchedScorer(model, head, pad).log_probs(prompts)
        assert calls, "the fused kernel did not run"
        np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-4)
        with model.disable_adapter():  # the adapter still counts on top of the kernel
            assert np.abs(BatchedScorer(model, head, pad).log_probs(prompts) - fused).max() > 1e-2

        calls.clear()
        kernels.fused_nf4(model, 2)  # no call is below 2 tokens: bitsandbytes' path
        np.testing.assert_array_equal(BatchedScorer(model, head, pad).log_probs(prompts), plain)
        assert not calls
        kernels.fused_nf4(model, 10_000)
        model.train()
        ids = torch.tensor([prompts[0]])
        model(input_ids=ids).logits.sum().backward()  # training keeps bitsandbytes' autograd
        assert not calls
        model.eval()
        assert kernels.fused_nf4(model, 0) == 0
        assert not any(getattr(vars(m).get("forward"), "__func__", None)
                       is kernels._fused_nf4_forward for m in model.modules())
        print("FUSED OK")
        """, tmp_path)
    assert "FUSED OK" in out
