"""A burst run layer by layer (scoring.layer_major_hidden_states, BatchedScorer's
`layer_major_tokens`): the same answers as batch after batch, each layer's folded weights
built once a wave instead of once a batch. On the CPU over a real peft LoRA model on a real
bitsandbytes NF4 base; the speed is a CUDA matter (bench/gpu_command.py `+lm<tokens>`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_marlin import _nf4_lora_model

from radproto.model import fp8, kernels, scoring
from radproto.model.catalog import default_catalog
from radproto.model.cuda_scoring import BatchedScorer
from radproto.model.head import new_head


@pytest.fixture
def burst(tmp_path):
    """(model, head, pad id, 10 prompts of two lengths), the fold on for calls >= 64."""
    model, tokenizer = _nf4_lora_model(tmp_path)
    head = new_head(model, tokenizer, default_catalog().names)
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist()
               for n in (40, 40, 40, 40, 33, 33, 33, 33, 33, 33)]
    kernels.lean_lora(model)
    kernels.fold_lora(model, 64)
    return model, head, tokenizer.pad_token_id, prompts


def _scorer(burst, layer_major_tokens):
    model, head, pad, _ = burst
    # 100 tokens a batch: 2 x 40 twice, 3 x 33 twice; each >= 64 tokens (the fold's calls)
    return BatchedScorer(model, head, pad, max_batch_tokens=100,
                         layer_major_tokens=layer_major_tokens)


def _count_builds(monkeypatch):
    """A list that grows by one each time a folded weight is built."""
    calls = []
    original = kernels.folded_weight
    monkeypatch.setattr(kernels, "folded_weight",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_layer_by_layer_gives_the_answers_of_batch_after_batch(burst):
    prompts = burst[3]
    batch_by_batch = _scorer(burst, 0).log_probs(prompts)
    layer_major = _scorer(burst, 10_000).log_probs(prompts)
    np.testing.assert_allclose(layer_major, batch_by_batch, rtol=0, atol=1e-5)
    assert np.isfinite(layer_major).all() and layer_major.shape == (10, len(burst[1].names))
    # and one wave over a plain (not 4-bit) decoder reads what last_hidden_states reads
    model = burst[0]
    ids = torch.tensor([prompts[0], prompts[1]])
    lengths = torch.tensor([40, 40])
    with torch.inference_mode():
        expected = scoring.last_hidden_states(model, ids, lengths)
        (got,) = scoring.layer_major_hidden_states(model, [(ids, lengths)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_each_layers_folded_weights_are_built_once_a_wave(burst, monkeypatch):
    prompts = burst[3]
    builds = _count_builds(monkeypatch)
    _scorer(burst, 0).log_probs(prompts)
    per_batch = len(builds)
    assert per_batch == 14 * 4  # 7 targets x 2 layers, again for each of the 4 batches
    builds.clear()
    _scorer(burst, 10_000).log_probs(prompts)  # one wave
    assert len(builds) == 14
    builds.clear()
    _scorer(burst, 200).log_probs(prompts)  # waves of at most 200 padded tokens: 2
    assert len(builds) == 28
    # nothing stays held after a burst: a lone order's call takes its own path again
    assert not any("_radproto_held_weight" in vars(m) for m in burst[0].modules())


def test_waves_add_batches_up_to_the_token_budget(burst):
    prompts = burst[3]
    scorer = _scorer(burst, 200)
    lengths = [len(p) for p in prompts]
    groups = scoring.length_batches(lengths, 100, scorer.max_batch)
    waves = scorer._waves(groups, lengths)
    assert [g for wave in waves for g in wave] == groups  # all batches, in order
    for wave in waves:
        assert sum(len(g) * max(lengths[i] for i in g) for g in wave) <= 200
    assert len(waves) == 2
    assert _scorer(burst, 0)._waves(groups, lengths) == [[g] for g in groups]


def test_with_fp8_each_layer_is_cast_once_a_wave_and_answers_match(burst, monkeypatch):
    model, prompts = burst[0], burst[3]
    assert fp8.fp8_burst(model, compile_casts=False) == 14
    batch_by_batch = _scorer(burst, 0).log_probs(prompts)
    casts = []
    for module in kernels.lean_4bit_layers(model):
        gemm = module._radproto_fp8
        original = gemm.weight8
        gemm.weight8 = lambda layer, o=original: casts.append(1) or o(layer)
    layer_major = _scorer(burst, 10_000).log_probs(prompts)
    assert len(casts) == 14
    # the same e4m3 weights and per-token scales: the same answers
    np.testing.assert_allclose(layer_major, batch_by_batch, rtol=0, atol=1e-5)
