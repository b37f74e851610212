"""The protocol head (issue 15): one row per catalog protocol over the prompt's last hidden
state, rows started from the protocols' names, re-keyed by a site's catalog, saved beside
the model; and a tiny training run that learns through it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from test_classifier_scoring import FIELDS, LONG, MAX_LENGTH, tiny_model
from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

from radproto.model.catalog import Catalog, Protocol
from radproto.model.classifier import MODEL_FILE, ModelConfig, ProtocolClassifier
from radproto.model.encoding import prompt_token_ids
from radproto.model.head import HEAD_FILE
from radproto.model.loading import load_base_model

NEW = (Protocol(name="CT Knee WO Contrast", modality="CT", body_region="knee",
                contrast="none"),
       Protocol(name="MRI Wrist WO Contrast", modality="MR", body_region="wrist",
                contrast="none"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer) -> Path:
    """tiny_model (the embedded tokenizer, sharp random weights) as a base-model directory."""
    directory = tmp_path_factory.mktemp("head-base")
    tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def config(base_dir) -> ModelConfig:
    # float32 serving on every CPU: these tests compare scores exactly
    return ModelConfig(base_model=str(base_dir), quantization="none", max_length=MAX_LENGTH,
                       compute_dtype="float32")


@pytest.fixture(scope="module")
def model_and_tokenizer(config):
    model, tokenizer = load_base_model(config, "cpu")
    return model.eval(), tokenizer


def untrained(model_and_tokenizer, config, catalog) -> ProtocolClassifier:
    model, tokenizer = model_and_tokenizer
    return ProtocolClassifier(model, tokenizer, catalog, config=config,
                              metadata={"kind": "base"})


def trained(model_and_tokenizer, config, catalog) -> ProtocolClassifier:
    """A classifier whose head rows are no longer their names' (as after fine-tuning)."""
    classifier = untrained(model_and_tokenizer, config, catalog)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        head = classifier.head
        head.weight.add_(torch.randn(head.weight.shape, generator=generator) * 0.5)
        head.bias.copy_(torch.randn(head.bias.shape, generator=generator))
    return classifier


def name_mean(model, tokenizer, name: str) -> torch.Tensor:
    ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    return model.get_output_embeddings().weight[ids].float().mean(0)


def test_the_head_has_one_row_per_protocol_started_from_its_name(model_and_tokenizer, config,
                                                                 catalog):
    model, tokenizer = model_and_tokenizer
    head = untrained(model_and_tokenizer, config, catalog).head
    assert head.names == catalog.names
    assert tuple(head.weight.shape) == (len(catalog), model.config.hidden_size)
    assert head.weight.dtype == torch.float32
    assert torch.equal(head.bias, torch.zeros(len(catalog)))
    with torch.no_grad():
        for row, name in zip(head.weight, catalog.names, strict=True):
            torch.testing.assert_close(row, name_mean(model, tokenizer, name))
    assert len({tuple(r.tolist()) for r in head.weight}) == len(catalog)  # distinct rows


def test_an_untrained_head_ranks_protocols_by_their_names_mean_logit(model_and_tokenizer,
                                                                      config, catalog):
    """Before training, a protocol scores the language model's mean logit over its name's
    tokens at the prompt's last position: the head starts where the LM would look."""
    model, tokenizer = model_and_tokenizer
    classifier = untrained(model_and_tokenizer, config, catalog)
    got = classifier.catalog_log_probs(FIELDS)
    for row, fields in zip(got, FIELDS, strict=True):
        ids = torch.tensor([prompt_token_ids(tokenizer, fields, MAX_LENGTH)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].float()
        means = torch.stack([logits[tokenizer(" " + n, add_special_tokens=False)["input_ids"]]
                             .mean() for n in catalog.names])
        np.testing.assert_allclose(row, torch.log_softmax(means, -1).numpy(), atol=1e-4)
        assert list(np.argsort(-row)[:5]) == list(torch.argsort(-means)[:5].numpy())


def test_a_site_catalog_that_adds_protocols_starts_their_rows_from_names(
        model_and_tokenizer, config, catalog, caplog):
    model, tokenizer = model_and_tokenizer
    classifier = trained(model_and_tokenizer, config, catalog)
    rows = {n: (w.clone(), b.clone()) for n, w, b in
            zip(catalog.names, classifier.head.weight.detach(), classifier.head.bias.detach(),
                strict=True)}
    before = classifier.catalog_log_probs(FIELDS)
    site = catalog.extended_with(Catalog(list(NEW), source="site"))
    with caplog.at_level(logging.WARNING, logger="radproto.model.classifier"):
        classifier.catalog = site
    added = tuple(p.name for p in NEW)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert all(name in warning for name in added)
    assert classifier.untrained_protocols == added
    assert classifier.dropped_protocols == ()
    head = classifier.head
    assert head.names == site.names and head.weight.shape[0] == len(catalog) + 2
    for index, name in enumerate(site.names):
        if name in rows:  # a trained row is kept as it was
            assert torch.equal(head.weight[index].detach(), rows[name][0])
            assert torch.equal(head.bias[index].detach(), rows[name][1])
        else:
            torch.testing.assert_close(head.weight[index].detach(),
                                       name_mean(model, tokenizer, name).detach())
            assert float(head.bias[index].detach()) == 0.0

    after = classifier.catalog_log_probs(FIELDS)
    assert after.shape == (len(FIELDS), len(site))
    # the old protocols' logits are untouched: their log-probs move by one constant per
    # order (the new rows take some of the mass)
    old = [site.names.index(n) for n in catalog.names]
    shift = after[:, old] - before
    assert np.ptp(shift, axis=1).max() < 1e-5 and (shift < 0).all()
    (suggestion,) = classifier.score_orders([FIELDS[0]])
    assert set(added) <= {s.protocol for s in suggestion.scores}
    assert suggestion.catalog_version == site.version != catalog.version


def test_a_site_catalog_that_drops_protocols_removes_their_rows(model_and_tokenizer, config,
                                                                 catalog, caplog):
    classifier = trained(model_and_tokenizer, config, catalog)
    weights = dict(zip(catalog.names, classifier.head.weight.detach().clone(), strict=True))
    before = classifier.catalog_log_probs(FIELDS)
    dropped = catalog.names[1:4]
    site = Catalog([p for p in catalog.protocols if p.name not in dropped], source="site")
    with caplog.at_level(logging.WARNING, logger="radproto.model.classifier"):
        classifier.catalog = site
    assert not caplog.records  # nothing untrained: no warning
    assert classifier.dropped_protocols == dropped
    assert classifier.untrained_protocols == ()
    assert classifier.head.names == site.names
    assert classifier.head.weight.shape[0] == len(catalog) - 3
    for name, row in zip(site.names, classifier.head.weight.detach(), strict=True):
        assert torch.equal(row, weights[name])
    after = classifier.catalog_log_probs(FIELDS)
    kept = [catalog.names.index(n) for n in site.names]
    shift = after - before[:, kept]
    assert np.ptp(shift, axis=1).max() < 1e-5 and (shift > 0).all()
    # the dropped rows are gone: brought back, they start from their names again
    classifier.catalog = catalog
    assert classifier.untrained_protocols == dropped


def test_save_and_load_give_identical_probabilities(model_and_tokenizer, config, catalog,
                                                    tmp_path):
    classifier = trained(model_and_tokenizer, config, catalog)
    before = classifier.probabilities(classifier.catalog_log_probs(FIELDS))
    directory = classifier.save(tmp_path / "model")
    record = json.loads((directory / MODEL_FILE).read_text())
    assert record["format_version"] == 2 and record["prompt_version"] == "p2"
    assert [p["name"] for p in record["catalog"]["protocols"]] == list(catalog.names)
    assert (directory / HEAD_FILE).is_file()

    loaded = ProtocolClassifier.load(directory)
    assert torch.equal(loaded.head.weight, classifier.head.weight.detach())
    assert torch.equal(loaded.head.bias, classifier.head.bias.detach())
    np.testing.assert_allclose(loaded.probabilities(loaded.catalog_log_probs(FIELDS)), before,
                               atol=1e-7, rtol=0)
    assert loaded.model_version == classifier.model_version
    assert loaded.untrained_protocols == ()

    # a serving catalog that adds one: the loaded model scores as the live one re-keyed
    site = catalog.extended_with(Catalog([NEW[0]], source="site"))
    served = ProtocolClassifier.load(directory, catalog=site)
    assert served.untrained_protocols == (NEW[0].name,)
    classifier.catalog = site
    expected = classifier.probabilities(classifier.catalog_log_probs(FIELDS))
    np.testing.assert_allclose(served.probabilities(served.catalog_log_probs(FIELDS)),
                               expected, atol=1e-7, rtol=0)
    # saved again, the site's model remembers which row never trained
    again = ProtocolClassifier.load(served.save(tmp_path / "site"))
    assert again.catalog.version == site.version
    assert again.untrained_protocols == (NEW[0].name,)
    np.testing.assert_allclose(again.probabilities(again.catalog_log_probs(FIELDS)),
                               expected, atol=1e-7, rtol=0)


def test_the_model_version_covers_the_head(model_and_tokenizer, config, catalog, tmp_path):
    classifier = trained(model_and_tokenizer, config, catalog)
    classifier.save(tmp_path / "a")
    first = classifier.model_version
    with torch.no_grad():
        classifier.head.bias[0] += 1.0
    classifier.save(tmp_path / "b")
    assert classifier.model_version != first


def test_an_order_scores_the_same_alone_and_in_a_batch(model_and_tokenizer, config, catalog):
    classifier = trained(model_and_tokenizer, config, catalog)
    orders = [*FIELDS, LONG, {"ordered_exam": "XR chest two views", "history": "cough"}]
    lengths = {len(prompt_token_ids(classifier.tokenizer, o, MAX_LENGTH)) for o in orders}
    assert len(lengths) == len(orders)  # every prompt a different length: padding varies
    batched = classifier.catalog_log_probs(orders)
    for row, order in zip(batched, orders, strict=True):
        # float32 sums in another order give ~1e-6 relative noise; padding seen would
        # move log-probs by far more
        np.testing.assert_allclose(row, classifier.catalog_log_probs([order])[0],
                                   atol=1e-5, rtol=1e-5)
    alone = classifier.score_orders([orders[2]])[0]
    together = classifier.score_orders(orders)[2]
    assert alone.protocol == together.protocol
    assert alone.confidence == pytest.approx(together.confidence, abs=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-2  # the rows are the orders' own


def test_a_tiny_training_run_improves_validation_accuracy(tmp_path):
    from radproto.training.data import load_training_data
    from radproto.training.finetune import train

    catalog = small_catalog()
    corpus = write_small_corpus(tmp_path / "corpus", catalog)
    config = tiny_config(write_tiny_base(tmp_path / "base"), corpus, tmp_path / "model",
                         max_steps=40, eval_interval=20, batch_size=16, max_length=64,
                         learning_rate=1e-3, lr_schedule="constant", val_size=24,
                         calibrate=False)
    trainers = []
    train(config, catalog, progress=False, on_step=lambda step, t: trainers.append(t))
    history = trainers[-1].history
    assert [h["step"] for h in history] == [0, 20, 40]
    assert history[-1]["val_top1"] > history[0]["val_top1"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]

    # the saved model scores the validation orders as the trainer measured its best step
    best = min(history, key=lambda h: h["val_loss"])
    _, valid = load_training_data(config, catalog)
    loaded = ProtocolClassifier.load(tmp_path / "model")
    predicted = loaded.catalog_log_probs(valid).argmax(axis=1)
    labels = np.array([catalog.names.index(r["label"]) for r in valid])
    assert float((predicted == labels).mean()) == pytest.approx(best["val_top1"])
