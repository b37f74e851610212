"""Scoring within a certified tolerance (model/bounded_scoring.py) against the exact pass.

A tiny Llama with the embedded tokenizer is first taught three prompt -> protocol pairs, so
that, as with a fine-tuned model, its mass sits on catalog names and the bounds can prune.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_classifier_scoring import FIELDS, MAX_LENGTH, tiny_model

from radproto.model.bounded_scoring import BoundedScorer
from radproto.model.calibration import catalog_probabilities
from radproto.model.classifier import ModelConfig, ProtocolClassifier
from radproto.model.encoding import encode_example, prompt_token_ids, target_token_ids
from radproto.model.errors import ModelError
from radproto.model.scoring import ProtocolTrie, trie_log_probs

LABELS = ["CT Head WO Contrast", "MRI Knee WO Contrast", "US Abdomen Right Upper Quadrant"]


@pytest.fixture(scope="module")
def taught(tokenizer, catalog):
    """(model, trie, prompts): the tiny model after learning FIELDS -> LABELS."""
    names = catalog.names
    labels = [n for n in LABELS if n in names]
    assert len(labels) == 3, "the reference catalog names these three protocols"
    model = tiny_model(tokenizer, seed=1).train()
    examples = [encode_example(tokenizer, f, label, MAX_LENGTH)
                for f, label in zip(FIELDS, labels, strict=True)]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            labels_t = torch.tensor([example["labels"]])
            loss = model(input_ids=ids, labels=labels_t).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    trie = ProtocolTrie.build([target_token_ids(tokenizer, n) for n in names])
    prompts = [prompt_token_ids(tokenizer, f, MAX_LENGTH) for f in FIELDS]
    return model, trie, prompts


def _exact(model, trie, prompts, pad):
    return trie_log_probs(model, prompts, trie, pad_token_id=pad)


def test_zero_tolerance_is_the_exact_pass(taught, tokenizer):
    model, trie, prompts = taught
    scorer = BoundedScorer(model, trie, tokenizer.pad_token_id, tolerance=0.0)
    got = scorer.log_probs(prompts)
    np.testing.assert_allclose(got, _exact(model, trie, prompts, tokenizer.pad_token_id),
                               atol=1e-4)
    assert scorer.nodes_run == [trie.n_nodes] * len(prompts)


@pytest.mark.parametrize(("tolerance", "temperature"), [(1e-4, 1.0), (1e-2, 0.5),
                                                         (1e-3, 2.0)])
def test_every_probability_is_within_the_tolerance_and_the_top3_is_exact(
        taught, tokenizer, tolerance, temperature):
    model, trie, prompts = taught
    exact = catalog_probabilities(_exact(model, trie, prompts, tokenizer.pad_token_id),
                                  temperature)
    scorer = BoundedScorer(model, trie, tokenizer.pad_token_id, tolerance=tolerance)
    bounded = catalog_probabilities(scorer.log_probs(prompts, temperature=temperature),
                                    temperature)
    np.testing.assert_allclose(bounded.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(bounded - exact).max() <= tolerance + 1e-6
    top3 = np.argsort(-exact, axis=1, kind="stable")[:, :3]
    assert (np.argsort(-bounded, axis=1, kind="stable")[:, :3] == top3).all()
    # the taught model's mass sits on few names: part of the tree never runs
    assert sum(scorer.nodes_run) < len(prompts) * trie.n_nodes


def test_a_prompt_batched_with_others_scores_as_alone(taught, tokenizer):
    model, trie, prompts = taught
    scorer = BoundedScorer(model, trie, tokenizer.pad_token_id, tolerance=1e-3)
    together = scorer.log_probs(prompts)
    for i, prompt in enumerate(prompts):
        # each order's expansions depend on its own bounds only, whatever its batch
        np.testing.assert_allclose(scorer.log_probs([prompt])[0], together[i], atol=1e-4)


def test_the_classifier_scores_within_its_tolerance(taught, tokenizer, catalog):
    model, _, _ = taught
    exact = ProtocolClassifier(model, tokenizer, catalog, config=ModelConfig(
        max_length=MAX_LENGTH), temperature=0.8)
    fast = ProtocolClassifier(model, tokenizer, catalog, config=ModelConfig(
        max_length=MAX_LENGTH), temperature=0.8, scoring_tolerance=1e-3)
    want = exact.score_orders(FIELDS)
    got = fast.score_orders(FIELDS)
    for w, g in zip(want, got, strict=True):
        assert [s.protocol for s in g.scores[:3]] == [s.protocol for s in w.scores[:3]]
        assert g.confidence == pytest.approx(w.confidence, abs=1e-3)


def test_a_tolerance_outside_0_1_is_refused(taught, tokenizer):
    model, trie, _ = taught
    with pytest.raises(ModelError, match="tolerance"):
        BoundedScorer(model, trie, tokenizer.pad_token_id, tolerance=1.5)


def test_predict_file_honours_the_scoring_tolerance(taught, tokenizer, catalog, tmp_path):
    import json

    from radproto.training.predict import predict_file

    model, _, _ = taught
    source = tmp_path / "orders.jsonl"
    source.write_text("".join(json.dumps({"id": f"o{i}", **f}) + "\n"
                              for i, f in enumerate(FIELDS)), "utf-8")
    results = {}
    for tolerance in (0.0, 1e-3):
        classifier = ProtocolClassifier(model, tokenizer, catalog,
                                        config=ModelConfig(max_length=MAX_LENGTH))
        out = tmp_path / f"pred-{tolerance}.jsonl"
        predict_file("unused", source, out, catalog=catalog, classifier=classifier,
                     progress=False, scoring_tolerance=tolerance)
        assert classifier.scoring_tolerance == tolerance
        results[tolerance] = [json.loads(line) for line in out.read_text().splitlines()]
    for exact, bounded in zip(results[0.0], results[1e-3], strict=True):
        assert bounded["protocol"] == exact["protocol"]
        assert bounded["confidence"] == pytest.approx(exact["confidence"], abs=1e-3)
