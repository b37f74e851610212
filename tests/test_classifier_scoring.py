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
from radproto.model.catalog import Catalog
from radproto.model.classifier import (
    ModelConfig,
    ProtocolClassifier,
    ensure_pad_token,
    fit_temperature,
    prompt_token_ids,
)
from radproto.model.errors import ModelError
from radproto.model.kernels import set_attention
from radproto.model.order import Diagnosis, Order
from radproto.model.prompt import PROMPT_VERSION
from radproto.model.scoring import padded_ids
from radproto.training.data import encode_rows

MAX_LENGTH = 256

FIELDS = [
    {"ordered_exam": "CT head", "history": "67 y/o female; fall on anticoagulation",
     "diagnosis": "W19 unspecified fall", "notes": "eval bleed"},
    {"ordered_exam": "MRI knee", "history": "twisting injury", "diagnosis": "", "notes": ""},
    {"ordered_exam": "US abdomen", "history": "RUQ pain after fatty meals, fever, nausea and "
     "vomiting for two days, murphy sign positive", "diagnosis": "R10.11 RUQ pain",
     "notes": "r/o cholecystitis"},
]
# Over MAX_LENGTH tokens even after each field is cut to 1000 characters: truncated.
LONG = dict(FIELDS[1], history="twisting injury on the field " * 40,
            notes="very long note " * 400)


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


def test_prompt_ends_at_the_cue_and_a_long_prompt_keeps_it(tokenizer):
    ids = prompt_token_ids(tokenizer, FIELDS[0], MAX_LENGTH)
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids).endswith("\nProtocol:")
    assert "fall on anticoagulation" in tokenizer.decode(ids)
    cut = prompt_token_ids(tokenizer, LONG, MAX_LENGTH)
    assert len(cut) == MAX_LENGTH
    assert tokenizer.decode(cut).endswith("\nProtocol:")  # the head reads this position
    assert tokenizer.decode(cut).startswith(tokenizer.decode(ids[:3]))


def test_a_batch_of_prompts_is_tokenized_as_each_alone(tokenizer):
    from radproto.model.encoding import batch_prompt_token_ids

    fields_list = [FIELDS[0], LONG, {}, FIELDS[0]]  # a cut one and an all-"none" one among them
    batch = batch_prompt_token_ids(tokenizer, fields_list, MAX_LENGTH)
    assert batch == [prompt_token_ids(tokenizer, f, MAX_LENGTH) for f in fields_list]
    assert len(batch[1]) == MAX_LENGTH and len(batch[0]) < MAX_LENGTH
    assert batch_prompt_token_ids(tokenizer, [], MAX_LENGTH) == []


def test_training_and_scoring_see_the_same_tokens(classifier, tokenizer, catalog, monkeypatch):
    """What the scorer feeds the model is exactly what training encodes for the same rows."""
    fields_list = [FIELDS[0], LONG]
    seen: list[list[int]] = []
    real = classifier_module.head_log_probs

    def spy(model, head, prompts, **kwargs):
        seen.extend(list(p) for p in prompts)
        return real(model, head, prompts, **kwargs)

    monkeypatch.setattr(classifier_module, "head_log_probs", spy)
    classifier.catalog_log_probs(fields_list)
    rows = [dict(f, label=catalog.names[i]) for i, f in enumerate(fields_list)]
    encoded = encode_rows(tokenizer, rows, catalog, MAX_LENGTH)
    assert seen == [e["input_ids"] for e in encoded]
    assert len(seen[1]) == MAX_LENGTH  # the long order was cut, the same way in both
    assert [e["label"] for e in encoded] == [0, 1]


def test_scores_are_the_head_on_the_prompts_last_hidden_state(classifier, tokenizer, catalog):
    """Batched, padded scoring equals a plain forward pass over each prompt alone."""
    got = classifier.catalog_log_probs(FIELDS)
    assert got.shape == (len(FIELDS), len(catalog))
    with torch.inference_mode():
        for row, fields in zip(got, FIELDS, strict=True):
            ids = torch.tensor([prompt_token_ids(tokenizer, fields, MAX_LENGTH)])
            hidden = classifier.model.model(input_ids=ids).last_hidden_state[0, -1]
            logits = hidden.float() @ classifier.head.weight.T + classifier.head.bias
            np.testing.assert_allclose(row, torch.log_softmax(logits, -1).numpy(),
                                       atol=1e-5, rtol=0)
    assert np.ptp(got[0]) > 1.0  # the protocols really differ (not a degenerate model)
    assert np.abs(got[0] - got[1]).max() > 1e-2  # and the order matters


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
        assert suggestion.prompt_version == PROMPT_VERSION == "p2"
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


def test_prepare_for_serving_takes_the_loaded_model_out_of_full_collections(classifier):
    """A full collection walks every tracked object: a loaded model's ~600k cost ~300 ms
    every few bursts. Once prepared, the model's objects sit in the permanent generation;
    preparing again (a model swap) first lets a collection free an earlier model's cycles."""
    import gc
    import weakref

    class Node:
        pass

    left_behind = Node()
    left_behind.cycle = left_behind  # garbage only a collection can free
    dead = weakref.ref(left_behind)
    classifier.prepare_for_serving()
    assert gc.get_freeze_count() > 0
    tracked = gc.get_objects()
    assert not any(o is classifier.model or o is classifier.head for o in tracked)
    assert len(tracked) < gc.get_freeze_count()
    del left_behind, tracked
    assert dead() is not None  # frozen with the rest: no collection reaches it
    gc.collect()
    assert dead() is not None
    classifier.prepare_for_serving()  # the next model ready: unfreeze, collect, freeze
    assert dead() is None


def test_bad_inputs_raise_model_errors(classifier, tokenizer, catalog):
    with pytest.raises(ModelError):
        classifier.score_orders([42])  # type: ignore[list-item]
    with pytest.raises(ModelError, match="empty prompt"):
        padded_ids([[5, 6], []], tokenizer.pad_token_id)
    with pytest.raises(ModelError, match="temperature"):
        ProtocolClassifier(classifier.model, tokenizer, catalog, head=classifier.head,
                           temperature=0.0)
    with pytest.raises(ModelError, match="no protocols"):
        classifier.catalog = Catalog([], source="empty")
    assert classifier.catalog is catalog  # a refused catalog changes nothing


@pytest.mark.parametrize("implementation", ["eager", "flash_attention_2"])
def test_scoring_under_other_attention_implementations(classifier, implementation):
    """Eager takes a float mask; a kernel that ignores 4D masks is swapped for SDPA."""
    expected = classifier.catalog_log_probs(FIELDS[:2])
    set_attention(classifier.model, implementation)
    try:
        got = classifier.catalog_log_probs(FIELDS[:2])
        assert classifier.model.config._attn_implementation == implementation
    finally:
        set_attention(classifier.model, "sdpa")
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_ranked_scores_put_every_protocol_in_probability_order_ties_in_catalog_order():
    from radproto.model.suggestion import ProtocolScore, ranked_scores

    names = ("A", "B", "C", "D")
    scores = ranked_scores(names, np.array([0.2, 0.4, 0.2, 0.2]))
    assert all(isinstance(s, ProtocolScore) for s in scores)
    assert [s.protocol for s in scores] == ["B", "A", "C", "D"]  # the three ties: A, C, D
    assert [s.probability for s in scores] == [0.4, 0.2, 0.2, 0.2]
    with pytest.raises(ValueError):  # still validated: a name must be a string
        ranked_scores((1, 2), np.array([0.5, 0.5]))
