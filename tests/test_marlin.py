"""model/marlin.py on the CPU: the int4 format, the LoRA fold it quantises, the routing of
small inference calls to it, and the kernel build's source handling and errors.

The Marlin GEMM itself needs a CUDA card (bench/lone_order_probe.py checks it against the
dequantised weight there); here `Int4Weight` itself serves as the int4 path: x @ its
dequantised weight, which is what the Marlin GEMM computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_support import random_prompts, with_lora, write_tiny_base

from radproto.model import kernels, marlin
from radproto.model.catalog import default_catalog
from radproto.model.cuda_scoring import BatchedScorer
from radproto.model.errors import ModelError
from radproto.model.head import new_head


def test_int4_rounds_each_weight_to_the_nearest_level_of_its_group():
    torch.manual_seed(0)
    dense = torch.randn(16, 256) * torch.linspace(0.01, 1.0, 256)  # groups of other scales
    int4 = marlin.Int4Weight.quantize(dense, group=128)
    assert int4.q.dtype == torch.uint8 and int4.q.shape == (16, 256)
    assert int4.scale.shape == (16, 2) and int4.q.min() >= 0 and int4.q.max() <= 15
    error = (int4.dequantize() - dense).abs()
    step = int4.scale.float().repeat_interleave(128, 1)
    # half a step, except a group's largest positive weight: 7.5 steps from zero with only 7
    # levels above it (GPTQ's symmetric scheme), plus the scale's bf16 rounding
    inner = (int4.q > 0) & (int4.q < 15)
    assert (error[inner] <= step[inner] / 2 * 1.001).all()
    assert (error <= step * 0.54).all()
    # each group's largest weight sits on the outermost level
    grouped = (int4.q.reshape(16, 2, 128).int() - 8).abs()
    assert (grouped.amax(-1) >= 7).all()
    with pytest.raises(ModelError, match="multiple of the group"):
        marlin.Int4Weight.quantize(torch.randn(4, 100), group=128)


def test_gptq_packing_holds_eight_inputs_per_int32_lowest_first():
    torch.manual_seed(1)
    int4 = marlin.Int4Weight.quantize(torch.randn(8, 128))
    packed = int4.gptq_packed()
    assert packed.shape == (16, 8) and packed.dtype == torch.int32
    unpacked = torch.stack([(packed >> (4 * i)) & 0xF for i in range(8)], dim=1)  # [16, 8, N]
    np.testing.assert_array_equal(unpacked.reshape(128, 8).T.numpy(), int4.q.int().numpy())


def test_scales_are_permuted_not_changed():
    scales = torch.arange(2 * 128, dtype=torch.float32).reshape(2, 128)  # [K / group, N]
    permuted = marlin.permute_scales(scales, 256, 128, 128)
    assert permuted.shape == scales.shape
    assert not torch.equal(permuted, scales)
    assert torch.equal(permuted.flatten().sort().values, scales.flatten())


def _nf4_lora_model(tmp_path):
    from radproto.model.loading import ModelConfig, load_base_model

    model, tokenizer = load_base_model(
        ModelConfig(base_model=str(write_tiny_base(tmp_path / "base")), quantization="nf4"),
        "cpu")
    return with_lora(model).eval(), tokenizer


def test_the_folded_weight_is_what_the_lora_layer_computes(tmp_path):
    model, _ = _nf4_lora_model(tmp_path)
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    x = torch.randn(5, layer.in_features)
    linear = torch.nn.functional.linear
    with torch.no_grad():
        expected = layer(x)
        base_only = layer.base_layer(x)
        folded = linear(x, kernels.folded_weight(layer))
        dequantised = linear(x, kernels._dequantized_4bit(layer.base_layer).float())
    # the adapter's part exactly (bitsandbytes' CPU kernel rounds the base part its own way)
    torch.testing.assert_close(folded - dequantised, expected - base_only, rtol=0, atol=1e-5)
    assert (expected - base_only).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-2 * float(expected.abs().max()))


def lean_nf4_scorer(tmp_path, length: int, count: int):
    """The NF4 LoRA model with kernels.lean_lora's forward, `count` random prompts of
    `length` tokens, and log_probs(prompts): one BatchedScorer call through its head."""
    model, tokenizer = _nf4_lora_model(tmp_path)
    head = new_head(model, tokenizer, default_catalog().names)
    prompts = random_prompts(length, count, vocab=model.get_input_embeddings().weight.shape[0])
    kernels.lean_lora(model)

    def log_probs(batch):
        return BatchedScorer(model, head, tokenizer.pad_token_id).log_probs(batch)

    return model, prompts, log_probs


def test_small_inference_calls_take_the_int4_copy_and_nothing_else_does(tmp_path):
    model, prompts, log_probs = lean_nf4_scorer(tmp_path, 27, 4)
    lean = log_probs(prompts)
    short = [p[:20] for p in prompts]  # one prompt a call: <= 24 tokens each

    def one_at_a_time():
        return np.concatenate([log_probs([p]) for p in short])

    exact = one_at_a_time()
    calls = []

    def reference(weight):
        return lambda x: calls.append(x.shape[0]) or weight(x)

    layers, _ = marlin.attach_int4(model, reference, max_tokens=24, group=32)
    assert layers == 14  # 7 targets x 2 layers, all over a 4-bit base
    int4 = one_at_a_time()
    assert calls and max(calls) <= 24
    # the NF4 weights plus the adapter, rounded again: close to the lean path, not equal
    assert 0 < np.abs(int4 - exact).max() < 0.1

    marlin.attach_int4(model, reference, max_tokens=24, group=32)
    calls.clear()
    log_probs(prompts)  # one batch of 4 long prompts
    assert not calls  # over the threshold: the bitsandbytes path
    np.testing.assert_allclose(log_probs(prompts), lean, rtol=0, atol=1e-6)
    model.train()  # training never takes the int4 copy: the adapter learns through its own
    model(input_ids=torch.tensor([short[0]])).logits.sum().backward()
    assert not calls
    assert kernels.plain_lora(model) == 14
    assert not any("_radproto_int4" in vars(m) for m in model.modules())


def test_sources_come_from_the_setting_or_installed_gptqmodel(tmp_path, monkeypatch):
    monkeypatch.delenv(marlin.SOURCE_ENV, raising=False)
    try:
        found = marlin.marlin_sources()
    except ModelError as exc:  # the usual case here: gptqmodel is not installed
        assert "pip install gptqmodel==7.7.0" in str(exc) and marlin.SOURCE_ENV in str(exc)
    else:
        assert (found / "gptq_marlin.cu").is_file()
    folder = tmp_path / "marlin"
    folder.mkdir()
    (folder / "gptq_marlin.cu").write_text("// sources\n")
    monkeypatch.setenv(marlin.SOURCE_ENV, str(folder))
    assert marlin.marlin_sources() == folder


def test_the_build_names_only_the_kernels_it_compiles(tmp_path):
    source = tmp_path / "marlin"
    (source / "core").mkdir(parents=True)
    for name in marlin._SOURCES:
        (source / name).write_text(f"// {name}\n")
    (source / "gptq_marlin.cu").write_text(
        "// before\ntemplate <typename scalar_t>\nMarlinFuncPtr get_marlin_kernel(int all) {\n"
        "  auto kernel = MarlinDefault;\n  // every instantiation\n  return kernel;\n}\n"
        "// after\n")
    files = marlin.prepare_sources(source, tmp_path / "build", kernel_files=4)
    assert len(files) == 4 + 4
    gemm = (tmp_path / "build" / "src" / "gptq_marlin.cu").read_text()
    assert gemm.startswith("// before") and gemm.endswith("// after\n")
    assert gemm.count("_GET_IF(vllm::kU4B8") == len(marlin.kernel_configs()) == 15
    assert "every instantiation" not in gemm
    kernels_text = "".join(Path(f).read_text() for f in files[4:])
    assert kernels_text.count("template __global__ void Marlin<") == 15

    (source / "gptq_marlin.cu").write_text("// a gptqmodel version without the dispatch\n")
    with pytest.raises(ModelError, match="get_marlin_kernel not found"):
        marlin.prepare_sources(source, tmp_path / "build")


def test_a_gemm_that_does_not_match_its_weights_fails_the_start(tmp_path):
    torch.manual_seed(2)
    int4 = marlin.Int4Weight.quantize(torch.randn(64, 256))
    assert marlin.check_int4(int4, int4) < 1e-2  # the reference in bf16 against float32
    with pytest.raises(ModelError, match="does not match its weights"):
        marlin.check_int4(lambda x: int4(x)[:, torch.randperm(64)], int4)
    with pytest.raises(ModelError, match="does not match"):
        marlin.check_int4(lambda x: int4(x) * float("nan"), int4)
    model, _ = _nf4_lora_model(tmp_path)
    kernels.lean_lora(model)
    with pytest.raises(ModelError, match="does not match"):  # attach checks the first layer
        marlin.attach_int4(model, lambda w: (lambda x: -w(x)), max_tokens=8, group=32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error off CUDA")
def test_marlin_without_cuda_is_a_clear_error(tmp_path, caplog):
    with pytest.raises(ModelError, match="needs a CUDA device"):
        marlin.load_ops(tmp_path)
    model, _ = _nf4_lora_model(tmp_path)
    kernels.lean_lora(model)
    with pytest.raises(ModelError, match="needs a CUDA device"):
        marlin.marlin_lora(model, 128, build_dir=tmp_path / "build")
    kernels.plain_lora(model)  # no layer over a 4-bit base is left for the int4 path
    assert marlin.marlin_lora(model, 128, build_dir=tmp_path / "build")["layers"] == 0
    assert "nothing served through Marlin" in caplog.text
    assert not (tmp_path / "build").exists()
