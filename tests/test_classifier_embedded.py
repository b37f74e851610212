"""The embedded SmolLM2-135M-Instruct: load it and score one order against the catalog."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from conftest import CACHE_DIR

from radproto.model.classifier import prompt_token_ids
from radproto.model.order import Order
from radproto.model.sources import load_classifier


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

    assert classifier.untrained_protocols == ()  # the base's head rows are all from names

    # Untrained, the head scores a protocol by the LM's mean logit over its name's tokens at
    # the prompt's last position: checked against the real weights' own forward pass.
    import torch

    log_probs = classifier.catalog_log_probs([order.prompt_fields()])[0]
    prompt = prompt_token_ids(tokenizer, order.prompt_fields(), classifier.config.max_length)
    with torch.no_grad():
        logits = classifier.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    means = torch.stack([logits[tokenizer(" " + name, add_special_tokens=False)["input_ids"]]
                         .mean() for name in catalog.names])
    np.testing.assert_allclose(log_probs, torch.log_softmax(means, -1).numpy(), atol=1e-3,
                               rtol=0)
