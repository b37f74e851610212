"""The CUDA scorers' batching gives scoring.py's log-probabilities (checked on CPU, fp32).

GraphedScorer needs CUDA graphs and is not exercised here; BatchedScorer's maths and
batching are the same on any device.
"""

from __future__ import annotations

import numpy as np
import torch
from test_train_support import random_prompts, wide_llama, with_lora

from radproto.model import kernels
from radproto.model.catalog import default_catalog
from radproto.model.cuda_scoring import BatchedScorer
from radproto.model.head import new_head
from radproto.model.scoring import head_log_probs, length_batches


def model_and_head(seed: int, *, lora: bool = False):
    model, tokenizer = wide_llama(seed)
    if lora:
        model = with_lora(model).eval()
    return model, new_head(model, tokenizer, default_catalog().names), tokenizer


def test_batched_scorer_equals_head_log_probs_in_input_order():
    model, head, tokenizer = model_and_head(21, lora=True)
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = random_prompts(22, 9, vocab=vocab)
    lengths = [len(p) for p in prompts]
    pad = tokenizer.pad_token_id
    expected = head_log_probs(model, head, prompts, pad_token_id=pad)
    assert expected.shape == (9, len(head.names))
    assert np.ptp(expected, axis=1).min() > 0.5  # the protocols really differ
    # a budget small enough for several batches, sorted by length: the rows must come back
    # in input order all the same
    scorer = BatchedScorer(model, head, pad, max_batch_tokens=60, max_batch=3)
    groups = length_batches(lengths, 60, 3)
    assert len(groups) > 2 and any(len(g) > 1 for g in groups)
    got = scorer.log_probs(prompts)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # each row is its own prompt's: scored alone it gives the same row
    for row in (0, 4, 8):
        alone = scorer.log_probs([prompts[row]])[0]
        np.testing.assert_allclose(got[row], alone, rtol=0, atol=1e-5)
    assert scorer.log_probs([]).shape == (0, len(head.names))


def test_length_batches_follow_the_budget_and_cover_every_prompt():
    lengths = [3, 10, 1, 7, 7, 2, 40]
    groups = length_batches(lengths, max_tokens=20, max_batch=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        width = max(lengths[i] for i in group)
        assert len(group) <= 3
        assert len(group) == 1 or len(group) * width <= 20
    assert groups[0] == [6]  # the longest first, alone: over the budget by itself


def test_lean_lora_scoring_equals_peft_scoring_and_is_undone():
    model, head, tokenizer = model_and_head(23, lora=True)
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = random_prompts(24, 5, vocab=vocab)
    pad = tokenizer.pad_token_id
    plain = BatchedScorer(model, head, pad).log_probs(prompts)
    patched = kernels.lean_lora(model)
    assert patched > 0
    assert kernels.lean_lora(model) == 0  # already patched: idempotent
    lean = BatchedScorer(model, head, pad).log_probs(prompts)
    np.testing.assert_allclose(lean, plain, rtol=0, atol=1e-5)
    assert kernels.plain_lora(model) == patched
    assert not any("forward" in vars(m) for m in model.modules()
                   if hasattr(m, "lora_A"))  # peft's own forward again
    np.testing.assert_array_equal(BatchedScorer(model, head, pad).log_probs(prompts), plain)
    # and the adapter is really on: without it the scores differ
    with model.disable_adapter():
        base = BatchedScorer(model, head, pad).log_probs(prompts)
    assert np.abs(base - plain).max() > 1e-2


def test_batched_scorer_reads_the_last_real_token_not_the_padding():
    model, head, tokenizer = model_and_head(25)
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13, 14]
    pad = tokenizer.pad_token_id
    together = BatchedScorer(model, head, pad).log_probs([short, long])
    alone = BatchedScorer(model, head, pad).log_probs([short])
    np.testing.assert_allclose(together[0], alone[0], rtol=0, atol=1e-5)
    # one more real token changes the row: the scorer does read the last position
    longer = BatchedScorer(model, head, pad).log_probs([[*short, 15]])
    assert np.abs(longer[0] - alone[0]).max() > 1e-3
    with torch.inference_mode():
        hidden = model.model(input_ids=torch.tensor([short])).last_hidden_state[0, -1]
        reference = torch.log_softmax(head(hidden[None]), -1)[0].double().numpy()
    np.testing.assert_allclose(alone[0], reference, rtol=0, atol=1e-5)


def test_a_4bit_weight_dequantises_after_bitsandbytes_repacks_it_for_the_cpu():
    """On a CPU with AVX-512 BF16, bitsandbytes repacks a 4-bit weight in place at its first
    inference forward; the folded path must still read the weight it holds. The repacking is
    plain torch, so it is applied here directly and the test runs on any CPU."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32,
                              quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(torch.randn(64, 128) * 0.05, requires_grad=False,
                                     quant_type="nf4", compress_statistics=True)
    layer.weight = layer.weight.to(torch.device("cpu"))  # quantises
    state = layer.weight.quant_state
    reference = dequantize_4bit(layer.weight.data, state).float()
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
        layer.weight.data, state)
    unpacked = kernels._dequantized_4bit(layer).float()
    assert unpacked.shape == (64, 128)
    # absmax is held in bfloat16 once repacked: agreement to its rounding
    torch.testing.assert_close(unpacked, reference, rtol=1e-2, atol=1e-4)


def test_folded_lora_on_a_4bit_base_equals_the_lean_path(tmp_path, monkeypatch):
    """fold_lora adds the LoRA delta to the dequantised NF4 weight for large inference calls:
    the same log-probabilities as two skinny LoRA GEMMs, only above its token threshold and
    never while training (bitsandbytes runs NF4 on CPU too)."""
    from test_train_support import write_tiny_base

    from radproto.model.loading import ModelConfig, load_base_model

    model, tokenizer = load_base_model(
        ModelConfig(base_model=str(write_tiny_base(tmp_path / "base")), quantization="nf4"),
        "cpu")
    model = with_lora(model).eval()
    head = new_head(model, tokenizer, default_catalog().names)
    prompts = random_prompts(26, 6, vocab=model.get_input_embeddings().weight.shape[0])
    pad = tokenizer.pad_token_id
    kernels.lean_lora(model)
    lean = BatchedScorer(model, head, pad).log_probs(prompts)
    folded_calls = []
    original = kernels._folded_forward
    monkeypatch.setattr(kernels, "_folded_forward",
                        lambda layer, x: folded_calls.append(x.shape) or original(layer, x))

    assert kernels.fold_lora(model, 1) == 14  # 7 targets x 2 layers, all 4-bit
    folded = BatchedScorer(model, head, pad).log_probs(prompts)
    assert folded_calls, "the folded path did not run"
    np.testing.assert_allclose(folded, lean, rtol=0, atol=2e-3)
    with model.disable_adapter():  # the adapter matters, so the fold really carried it
        base = BatchedScorer(model, head, pad).log_probs(prompts)
    assert np.abs(base - lean).max() > 1e-2

    folded_calls.clear()
    kernels.fold_lora(model, 10_000)  # calls below the threshold keep the lean path
    np.testing.assert_array_equal(BatchedScorer(model, head, pad).log_probs(prompts), lean)
    assert not folded_calls
    kernels.fold_lora(model, 1)
    model.train()  # training never folds: the adapter's gradients come from its own GEMMs
    ids = torch.tensor([prompts[0]])
    model(input_ids=ids).logits.sum().backward()
    assert not folded_calls
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    assert kernels.plain_lora(model) == 14
    assert not any("_radproto_fold_tokens" in vars(m) for m in model.modules())
