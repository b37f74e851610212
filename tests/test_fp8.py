"""model/fp8.py on the CPU: torch's float8 casts and `_scaled_mm` run here as on the card
(the casts uncompiled: torch.compile only fuses them), over a real peft LoRA layer on a real
bitsandbytes NF4 base. The speed is a CUDA matter (bench/gpu_command.py `+fp8`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_marlin import _nf4_lora_model, lean_nf4_scorer

from radproto.model import fp8, kernels


@pytest.fixture
def lora_layer(tmp_path):
    model, _ = _nf4_lora_model(tmp_path)
    return model.base_model.model.model.layers[0].mlp.down_proj


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference).abs().mean() / reference.abs().mean())


def test_the_fp8_gemm_is_x_times_the_folded_weight_within_e4m3_rounding(lora_layer):
    gemm = fp8.Fp8Gemm(lora_layer, compile_casts=False)
    x = torch.randn(3, 5, lora_layer.in_features).to(torch.bfloat16)
    with torch.no_grad():
        out = gemm(x, lora_layer)
        reference = x.float() @ kernels.folded_weight(lora_layer).T
    assert out.shape == (3, 5, lora_layer.out_features) and out.dtype == torch.bfloat16
    # e4m3 keeps 3 mantissa bits: a few percent per product, averaging down over K
    assert 0.002 < _relative_error(out, reference) < 0.06
    # the adapter is in the product (not the base alone)
    base_only = x.float() @ kernels._dequantized_4bit(lora_layer.base_layer).float().T
    assert _relative_error(base_only, reference) > 0.1


def test_each_order_is_scaled_alone_so_a_batch_does_not_change_its_answer(lora_layer):
    gemm = fp8.Fp8Gemm(lora_layer, compile_casts=False)
    quiet = torch.randn(4, lora_layer.in_features).to(torch.bfloat16)
    loud = quiet.clone()
    loud[3] *= 1000  # one order of very different magnitude in the batch
    with torch.no_grad():
        alone = torch.cat([gemm(row[None], lora_layer) for row in quiet])
        torch.testing.assert_close(gemm(quiet, lora_layer), alone, rtol=0, atol=0)
        torch.testing.assert_close(gemm(loud, lora_layer)[:3], alone[:3], rtol=0, atol=0)


def test_the_weight_scale_maps_the_largest_folded_weight_to_e4m3s_largest(lora_layer):
    gemm = fp8.Fp8Gemm(lora_layer, compile_casts=False)
    with torch.no_grad():
        cast = gemm.weight8(lora_layer)
        dtype = lora_layer.base_layer.compute_dtype or torch.bfloat16
        folded = kernels.folded_weight(lora_layer, dtype).float()
    assert cast.dtype == torch.float8_e4m3fn and cast.shape == folded.shape
    assert torch.isfinite(cast.float()).all()
    assert float(cast.float().abs().max()) == fp8.E4M3_MAX
    assert float(gemm.scale) == pytest.approx(float(folded.abs().max()) / fp8.E4M3_MAX,
                                              rel=1e-6)
    overflow = fp8._cast_weight(torch.tensor([[3.0, -5.0]]), torch.tensor(448.0))
    assert overflow.float().tolist() == [[448.0, -448.0]]  # clamped, not inf or NaN


def test_bursts_of_folded_layers_take_fp8_and_small_calls_do_not(tmp_path):
    model, prompts, log_probs = lean_nf4_scorer(tmp_path, 31, 8)
    assert fp8.fp8_burst(model, compile_casts=False) == 0  # no fold yet: nothing to ride on
    kernels.fold_lora(model, 64)
    folded_burst, folded_one = log_probs(prompts), log_probs(prompts[:1])
    assert fp8.fp8_burst(model, compile_casts=False) == 14  # 7 targets x 2 layers
    calls = []
    for module in kernels.lean_4bit_layers(model):
        gemm = module._radproto_fp8
        module._radproto_fp8 = lambda x, layer, held, g=gemm: calls.append(
            x.numel() // x.shape[-1]) or g(x, layer, held)
    burst, one = log_probs(prompts), log_probs(prompts[:1])
    assert calls and min(calls) >= 64  # only calls the fold takes
    np.testing.assert_array_equal(one, folded_one)  # a lone order's short call: untouched
    gap = np.abs(burst - folded_burst).max()
    assert 0 < gap < 0.1  # rounded again, close
    assert (burst.argmax(1) == folded_burst.argmax(1)).mean() >= 0.75
    kernels.plain_lora(model)
    assert not any("_radproto_fp8" in m.__dict__ for m in model.modules())


def test_projections_of_one_input_share_its_cast(tmp_path, monkeypatch):
    """q, k and v read one tensor, gate and up another: with SHARE_INPUT_CASTS (opt-in) a decoder
    layer casts 4 inputs instead of 7, and the answers are bit-identical."""
    model, prompts, log_probs = lean_nf4_scorer(tmp_path, 31, 8)
    kernels.fold_lora(model, 64)
    assert fp8.fp8_burst(model, compile_casts=False) == 14  # 7 targets x 2 layers
    casts = []
    for module in kernels.lean_4bit_layers(model):
        gemm = module._radproto_fp8
        gemm._cast_rows = lambda flat, cast=gemm._cast_rows: casts.append(1) or cast(flat)

    monkeypatch.setattr(fp8, "SHARE_INPUT_CASTS", False)
    each_its_own = log_probs(prompts)
    assert len(casts) == 14  # one batch, two layers, every projection casts
    casts.clear()
    monkeypatch.setattr(fp8, "SHARE_INPUT_CASTS", True)
    shared = log_probs(prompts)
    assert len(casts) == 8  # per layer: q/k/v once, o, gate/up once, down
    np.testing.assert_array_equal(shared, each_its_own)
