"""The embedded SmolLM2-135M-Instruct: load it and score one order against the catalog."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from conftest import CACHE_DIR

from radproto.model.classifier import (
    load_classifier,
    prompt_token_ids,
    target_token_ids,
)
from radproto.model.order import Order
from radproto.model.scoring import naive_log_probs


@pytest.mark.slow
def test_embedded_model_scores_the_whole_catalog(catalog):
    classifier = load_classifier("embedded", catalog=catalog, cache_dir=CACHE_DIR)
    tokenizer = classifier.tokenizer
    assert type(classifier.model).__name__ == "LlamaForCausalLM"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert classifier.temperature == 1.0

    order = Order(ordered_exam_text="CT head without contrast", patient_age_years=81,
                  patient_sex="female", reason_for_study="fall on anticoagulation",
                  raw_message_id="m-1")
    (suggestion,) = classifier.score_orders([order])
    assert len(suggestion.scores) == len(catalog)
    assert sum(s.probability for s in suggestion.scores) == pytest.approx(1.0)
    assert suggestion.catalog_version == catalog.version
    assert suggestion.model_version == "base-smollm2"

    # The one-pass prefix-tree scores equal a pass per protocol on the real weights too.
    log_probs = classifier.catalog_log_probs([order.prompt_fields()])[0]
    picked = [0, 1, len(catalog) // 2, len(catalog) - 1]
    prompt = prompt_token_ids(tokenizer, order.prompt_fields(), classifier.config.max_length)
    naive = naive_log_probs(classifier.model, prompt,
                            [target_token_ids(tokenizer, catalog.names[i]) for i in picked])
    np.testing.assert_allclose(log_probs[picked], naive, atol=1e-3, rtol=0)
