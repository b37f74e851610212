"""The classifier's scoring, calibration and abstention on a tiny random Llama.

The tiny model shares the embedded tokenizer, so prompts and protocol names tokenize exactly
as in production; only the weights are small and random.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from radproto.model import classifier as classifier_module
from radproto.model.calibration import catalog_probabilities, nll
from radproto.model.catalog import Catalog, Protocol
from radproto.model.classifier import (
    ModelConfig,
    ProtocolClassifier,
    encode_example,
    ensure_pad_token,
    fit_temperature,
    prompt_token_ids,
    target_token_ids,
)
from radproto.model.encoding import IGNORE_INDEX, TARGET_RESERVE
from radproto.model.errors import ModelError
from radproto.model.order import Diagnosis, Order
from radproto.model.scoring import ProtocolTrie, naive_log_probs

MAX_LENGTH = 256

FIELDS = [
    {"ordered_exam": "CT head", "history": "67 y/o female; fall on anticoagulation",
     "diagnosis": "W19 unspecified fall", "notes": "eval bleed"},
    {"ordered_exam": "MRI knee", "history": "twisting injury", "diagnosis": "", "notes": ""},
    {"ordered_exam": "US abdomen", "history": "RUQ pain after fatty meals, fever, nausea and "
     "vomiting for two days, murphy sign positive", "diagnosis": "R10.11 RUQ pain",
     "notes": "r/o cholecystitis"},
]


def tiny_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    # Larger weights than the default init: sharper, order-dependent distributions, so a
    # wrong mask or position id changes the numbers visibly.
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module")
def classifier(tokenizer, catalog) -> ProtocolClassifier:
    return ProtocolClassifier(tiny_model(tokenizer), tokenizer, catalog,
                              config=ModelConfig(max_length=MAX_LENGTH))


def test_pad_token_is_distinct_from_eos(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_ensure_pad_token_replaces_a_pad_equal_to_eos(tokenizer, catalog):
    tok = _pad_is_eos(tokenizer)
    with pytest.raises(ModelError, match="pad token"):
        ProtocolClassifier(tiny_model(tokenizer), tok, catalog)
    ensure_pad_token(tok)
    assert tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == len(tokenizer)  # an existing spare token, no embedding resize


def _pad_is_eos(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    return tok


def test_encode_example_masks_the_prompt_and_ends_with_eos(tokenizer):
    example = encode_example(tokenizer, FIELDS[0], "CT Head WO Contrast", MAX_LENGTH)
    n = example["prompt_len"]
    assert example["labels"][:n] == [IGNORE_INDEX] * n
    assert example["labels"][n:] == example["input_ids"][n:]
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"][n:-1]) == " CT Head WO Contrast"
    assert tokenizer.decode(example["input_ids"][:n]).endswith("\nProtocol:")
    prompt_only = encode_example(tokenizer, FIELDS[0], None, MAX_LENGTH)
    assert prompt_only["input_ids"] == example["input_ids"][:n]
    assert set(prompt_only["labels"]) == {IGNORE_INDEX}


def test_training_and_scoring_see_the_same_tokens(classifier, tokenizer, catalog, monkeypatch):
    """What the scorer feeds the model is exactly what encode_example trains on."""
    long_notes = dict(FIELDS[1], notes="very long note " * 400)  # forces prompt truncation
    fields_list = [FIELDS[0], long_notes]
    seen: dict = {}
    real = classifier_module.trie_log_probs

    def spy(model, prompts, trie, *, pad_token_id):
        seen.setdefault("prompts", []).extend(list(p) for p in prompts)
        seen["trie"] = trie
        return real(model, prompts, trie, pad_token_id=pad_token_id)

    monkeypatch.setattr(classifier_module, "trie_log_probs", spy)
    classifier.catalog_log_probs(fields_list, batch_size=1)
    for fields in fields_list:
        for name in (catalog.names[0], catalog.names[-1]):
            example = encode_example(tokenizer, fields, name, MAX_LENGTH)
            assert example["input_ids"][: example["prompt_len"]] in seen["prompts"]
    truncated = encode_example(tokenizer, long_notes, catalog.names[0], MAX_LENGTH)
    assert truncated["prompt_len"] == MAX_LENGTH - TARGET_RESERVE
    assert tokenizer.decode(truncated["input_ids"][: truncated["prompt_len"]]).endswith(
        "\nProtocol:")
    trie: ProtocolTrie = seen["trie"]
    for index, name in enumerate(catalog.names):
        example = encode_example(tokenizer, FIELDS[0], name, MAX_LENGTH)
        label_tokens = [t for t in example["labels"] if t != IGNORE_INDEX]
        scored = trie.step_token[trie.step_protocol == index].tolist()
        assert scored == label_tokens == target_token_ids(tokenizer, name)


def test_prefix_tree_pass_matches_one_pass_per_protocol(classifier, tokenizer, catalog):
    # Orders of different prompt lengths share a batch: padding must not change anything.
    tree = classifier.catalog_log_probs(FIELDS, batch_size=3)
    assert tree.shape == (len(FIELDS), len(catalog))
    targets = [target_token_ids(tokenizer, name) for name in catalog.names]
    for row, fields in zip(tree, FIELDS, strict=True):
        prompt = prompt_token_ids(tokenizer, fields, MAX_LENGTH)
        naive = naive_log_probs(classifier.model, prompt, targets)
        np.testing.assert_allclose(row, naive, atol=1e-4, rtol=0)
    assert np.ptp(tree[0]) > 1.0  # the protocols really differ (not a degenerate model)
    one_by_one = classifier.catalog_log_probs(FIELDS, batch_size=1)
    np.testing.assert_allclose(one_by_one, tree, atol=1e-4, rtol=0)


def test_trie_shares_prefixes_and_keeps_eos_out_of_the_input(tokenizer, catalog):
    sequences = [target_token_ids(tokenizer, name) for name in catalog.names]
    trie = ProtocolTrie.build(sequences)
    assert trie.n_nodes < sum(len(s) - 1 for s in sequences)  # shared prefixes
    assert tokenizer.eos_token_id not in set(trie.node_tokens.tolist())
    assert len(trie.step_token) == sum(len(s) for s in sequences)


def test_probabilities_sum_to_one_over_the_catalog(classifier, catalog):
    orders = [Order(ordered_exam_text="CT chest", reason_for_study="dyspnea",
                    patient_age_years=54, patient_sex="male",
                    diagnoses=(Diagnosis(code="R06.0", text="dyspnea"),),
                    raw_message_id="msg-1"), FIELDS[2]]
    suggestions = classifier.score_orders(orders)
    assert len(suggestions) == 2
    for suggestion in suggestions:
        probs = [s.probability for s in suggestion.scores]
        assert len(probs) == len(catalog)
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
        assert probs == sorted(probs, reverse=True)
        assert {s.protocol for s in suggestion.scores} == set(catalog.names)
        assert suggestion.protocol == suggestion.scores[0].protocol
        assert suggestion.confidence == suggestion.scores[0].probability
        assert suggestion.catalog_version == catalog.version
        assert suggestion.prompt_version == "p1"
    assert suggestions[0].raw_message_id == "msg-1"
    assert classifier.score_orders([]) == []


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(7)
    true_t = 2.5
    logits = rng.normal(0.0, 4.0, size=(6000, 12))
    probs = catalog_probabilities(logits, true_t)
    labels = np.array([rng.choice(12, p=p) for p in probs])
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.08)
    assert nll(logits, labels, fitted) < nll(logits, labels, 1.0)
    # An overconfident model is cooled, an underconfident one sharpened.
    assert fit_temperature(logits * 3, labels) > 3 * fitted * 0.9
    assert fit_temperature(logits / 2, labels) == pytest.approx(fitted / 2, rel=0.08)


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ModelError):
        fit_temperature(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(ModelError):
        fit_temperature(np.zeros((3, 4)), np.array([0, 1]))
    with pytest.raises(ModelError):
        fit_temperature(np.full((2, 2), np.nan), np.array([0, 1]))


def test_temperature_changes_probabilities_not_ranking(classifier):
    log_probs = classifier.catalog_log_probs(FIELDS[:1])
    cold = catalog_probabilities(log_probs, 0.5)[0]
    hot = catalog_probabilities(log_probs, 4.0)[0]
    assert np.argmax(cold) == np.argmax(hot)
    assert cold.max() > hot.max()


def test_low_confidence_abstains_with_reason_and_top_three(tokenizer, catalog):
    # A very high temperature flattens the distribution: confidence near 1/58.
    flat = ProtocolClassifier(tiny_model(tokenizer), tokenizer, catalog,
                              config=ModelConfig(max_length=MAX_LENGTH),
                              temperature=1000.0, abstain_threshold=0.5)
    (suggestion,) = flat.score_orders([FIELDS[0]])
    assert suggestion.abstained is True
    assert suggestion.confidence < 0.5
    assert re.fullmatch(r"confidence 0\.\d\d below threshold 0\.50", suggestion.abstain_reason)
    assert len(suggestion.top(3)) == 3
    assert suggestion.protocol == suggestion.top(3)[0].protocol
    flat.abstain_threshold = 0.0
    (confident,) = flat.score_orders([FIELDS[0]])
    assert confident.abstained is False and confident.abstain_reason == ""


def test_protocol_added_after_training_is_scored(classifier, catalog, tokenizer):
    new = Protocol(name="CT Knee WO Contrast", modality="CT", body_region="knee",
                   contrast="none")
    extended = catalog.extended_with(Catalog([new], source="site"))
    before = classifier.catalog_log_probs(FIELDS[:2])
    scorer = ProtocolClassifier(classifier.model, tokenizer, extended,
                                config=classifier.config, trained_catalog=catalog)
    after = scorer.catalog_log_probs(FIELDS[:2])
    assert after.shape == (2, len(catalog) + 1)
    # The old protocols' (unnormalized) log-probs are untouched by the new name.
    np.testing.assert_allclose(after[:, : len(catalog)], before, atol=1e-4, rtol=0)
    prompt = prompt_token_ids(tokenizer, FIELDS[0], MAX_LENGTH)
    naive = naive_log_probs(classifier.model, prompt, [target_token_ids(tokenizer, new.name)])
    assert after[0, -1] == pytest.approx(naive[0], abs=1e-4)
    (suggestion,) = scorer.score_orders([FIELDS[0]])
    assert new.name in {s.protocol for s in suggestion.scores}
    assert suggestion.catalog_version == extended.version != catalog.version
    assert sum(s.probability for s in suggestion.scores) == pytest.approx(1.0)


def test_scoring_restores_training_mode(classifier):
    classifier.model.train()
    try:
        classifier.catalog_log_probs(FIELDS[:1])
        assert classifier.model.training
    finally:
        classifier.model.eval()


def test_scoring_in_eval_mode_leaves_every_module_in_eval_mode(classifier):
    # _eval_mode skips eval() for a model already in eval mode (thousands of modules on a
    # 7B): a submodule left in training mode must then not be switched on by scoring
    classifier.model.eval()
    before = classifier.catalog_log_probs(FIELDS[:2])
    classifier.catalog_log_probs(FIELDS[:2])
    assert not any(m.training for m in classifier.model.modules())
    np.testing.assert_array_equal(classifier.catalog_log_probs(FIELDS[:2]), before)


def test_prepare_for_serving_is_free_off_cuda(classifier):
    before = classifier.catalog_log_probs(FIELDS[:2])
    assert classifier.prepare_for_serving(compile_kernels=True) == 0.0
    assert not classifier._cuda_scorers  # nothing captured or compiled on CPU
    np.testing.assert_array_equal(classifier.catalog_log_probs(FIELDS[:2]), before)


def test_bad_inputs_raise_model_errors(classifier):
    with pytest.raises(ModelError):
        classifier.score_orders([42])  # type: ignore[list-item]
    with pytest.raises(ModelError):
        classifier.catalog_log_probs(FIELDS, batch_size=0)
    with pytest.raises(ModelError):
        ProtocolTrie.build([])


def _set_attention(model, implementation: str) -> None:
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = implementation


@pytest.mark.parametrize("implementation", ["eager", "flash_attention_2"])
def test_scoring_under_other_attention_implementations(classifier, implementation):
    """Eager takes a float mask; a kernel that ignores 4D masks is swapped for SDPA."""
    expected = classifier.catalog_log_probs(FIELDS[:2])
    _set_attention(classifier.model, implementation)
    try:
        got = classifier.catalog_log_probs(FIELDS[:2])
        assert classifier.model.config._attn_implementation == implementation
    finally:
        _set_attention(classifier.model, "sdpa")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
