"""The lexical model and its blend with the protocol head: fitting, scoring, re-keying to a
site catalog, storage without pickle, the blend weight and `radproto calibrate`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from test_train_support import tiny_llama

from radproto.cli import main
from radproto.model.calibration import blend_log_probs, fit_blend
from radproto.model.catalog import Catalog, Protocol, default_catalog
from radproto.model.classifier import MODEL_FILE, ModelConfig, ProtocolClassifier
from radproto.model.lexical import LEXICAL_WEIGHTS, load_lexical, rows_fingerprint
from radproto.training.lexical import fit_lexical, tfidf_features

# Four protocols, each with its own vocabulary, in several phrasings.
PHRASES = {
    "CT Head WO Contrast": ["fall on warfarin head strike", "head trauma after fall",
                            "acute confusion after fall hit head", "head injury fall elderly"],
    "MRI Lumbar Spine WO Contrast": ["low back pain sciatica radiating leg",
                                     "lumbar radiculopathy leg numbness",
                                     "back pain with leg weakness", "sciatica for months"],
    "US Abdomen Right Upper Quadrant": ["right upper quadrant pain after meals gallstones",
                       "ruq pain murphy sign", "biliary colic fatty meal", "gallbladder pain"],
    "CT Renal Stone Protocol": ["flank pain haematuria colic", "renal colic loin to groin",
                                "kidney stone flank pain", "ureteric colic blood in urine"],
}


def rows() -> list[dict]:
    out = []
    for label, phrases in PHRASES.items():
        for i, text in enumerate(phrases * 3):
            out.append({"history": text, "diagnosis": "", "notes": f"note {i}",
                        "ordered_exam": "", "label": label})
    return out


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(scope="module")
def lexical(catalog):
    return fit_lexical(rows(), catalog.names)


def test_lexical_model_learns_its_protocols_and_gives_unseen_ones_nothing(lexical, catalog):
    probe = [{"history": "fell and hit his head on warfarin"},
             {"history": "pain from the loin to the groin with blood in the urine"}]
    probs = np.exp(lexical.log_probs(probe))
    assert probs.shape == (2, len(catalog))
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert catalog.names[probs[0].argmax()] == "CT Head WO Contrast"
    assert catalog.names[probs[1].argmax()] == "CT Renal Stone Protocol"
    unseen = catalog.names.index("MRI Brain W and WO Contrast")
    assert probs[:, unseen].max() < 1e-6


def test_lexical_model_round_trips_without_pickle(lexical, tmp_path):
    lexical.save(tmp_path)
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in tmp_path.iterdir())
    loaded = load_lexical(tmp_path)
    probe = [{"history": "gallbladder pain after fatty meal"}, {"history": "sciatica"}]
    # coefficients are stored in float16: probabilities agree to well under a point
    assert np.abs(np.exp(loaded.log_probs(probe)) - np.exp(lexical.log_probs(probe))).max() \
        < 5e-3
    assert load_lexical(tmp_path / "nowhere") is None
    # what it was fitted on travels with it: a card's recipe can be checked against it
    assert loaded.fitted_on == lexical.fitted_on == rows_fingerprint(rows())
    assert lexical.fitted_on["rows"] == len(rows())


def test_the_fingerprint_names_the_rows_exactly():
    data = rows()
    assert rows_fingerprint(data) == rows_fingerprint([dict(r) for r in data])
    assert rows_fingerprint(data) != rows_fingerprint(data + data[:1])  # one repeat more
    relabelled = [{**data[0], "label": "CT Renal Stone Protocol"}, *data[1:]]
    assert rows_fingerprint(relabelled) != rows_fingerprint(data)
    reordered = [data[1], data[0], *data[2:]]
    assert rows_fingerprint(reordered) != rows_fingerprint(data)


def test_tfidf_features_are_sklearns_where_no_count_ties_at_the_cut():
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [" ".join(p) for p in PHRASES.values()] + [p for ps in PHRASES.values() for p in ps]
    for settings in ({"ngram_range": (1, 2), "sublinear_tf": True},
                     {"analyzer": "char_wb", "ngram_range": (3, 5), "min_df": 2}):
        vocabulary, idf, features = tfidf_features(texts, settings)
        reference = TfidfVectorizer(**settings).fit(texts)
        assert vocabulary == reference.vocabulary_
        np.testing.assert_allclose(idf, reference.idf_)
        np.testing.assert_allclose(features.toarray(), reference.transform(texts).toarray())


def test_tfidf_features_break_count_ties_at_the_cut_by_the_n_gram():
    # 3,000 words seen 1, 2 or 3 times, shuffled into texts; the cut falls inside the words
    # seen twice: the thrice-seen ones and the 500 alphabetically first of the twice-seen
    # are kept, whatever sort kernel the CPU has. (sklearn's own max_features breaks such
    # ties by an unstable argsort: on an AVX2 EPYC it kept ~160 others; on an AVX-512 CPU
    # NumPy sorts with other kernels again.)
    rng = np.random.default_rng(0)
    words = [f"w{i:04d}" for i in range(3000)]
    seen = rng.integers(1, 4, size=len(words))
    bag = [w for w, n in zip(words, seen, strict=True) for _ in range(n)]
    bag = [bag[i] for i in rng.permutation(len(bag))]
    texts = [" ".join(bag[i:i + 40]) for i in range(0, len(bag), 40)]
    thrice = {w for w, n in zip(words, seen, strict=True) if n == 3}
    twice = [w for w, n in zip(words, seen, strict=True) if n == 2]
    vocabulary, idf, features = tfidf_features(texts, {"max_features": len(thrice) + 500})
    assert set(vocabulary) == thrice | set(twice[:500])
    assert sorted(vocabulary, key=vocabulary.get) == sorted(vocabulary)  # sklearn's order
    assert features.shape == (len(texts), len(vocabulary)) and len(idf) == len(vocabulary)


def test_lexical_model_re_keys_to_a_site_catalog(lexical):
    names = ("US Abdomen Right Upper Quadrant", "Site New Protocol", "CT Head WO Contrast")
    site = lexical.for_catalog(names)
    assert site.names == names
    probe = [{"history": "fall on warfarin head strike"}]
    probs = np.exp(site.log_probs(probe))[0]
    assert probs.argmax() == 2
    # the new protocol's row is neutral: no word moves it
    assert not site.coef[1].any()


def test_fit_blend_weighs_the_informative_source():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=400)
    informative = np.log(np.full((400, 6), 0.04))
    informative[np.arange(400), labels] = np.log(0.8)
    noise = np.log(rng.dirichlet(np.ones(6), size=400))
    weight, temperature = fit_blend(noise, informative, labels)
    assert weight >= 1.0 and temperature > 0
    weight, _ = fit_blend(informative, noise, labels)
    assert weight <= 0.1
    blended = blend_log_probs(noise, informative, 2.0)
    assert np.allclose(np.exp(blended).sum(axis=1), 1.0)


def tiny_classifier(catalog: Catalog) -> ProtocolClassifier:
    model, tokenizer = tiny_llama(hidden=32, layers=1)
    return ProtocolClassifier(model.eval(), tokenizer, catalog,
                              config=ModelConfig(quantization="none"))


def test_blend_follows_the_lexical_model_when_it_weighs_more(lexical, catalog):
    classifier = tiny_classifier(catalog)
    fields = [{"history": "renal colic loin to groin"}, {"history": "ruq pain murphy sign"}]
    alone = classifier.catalog_log_probs(fields)
    classifier.lexical, classifier.lexical_weight = lexical, 0.0
    assert np.array_equal(classifier.catalog_log_probs(fields), alone)
    classifier.lexical_weight = 3.0
    blended = classifier.catalog_log_probs(fields)
    assert [catalog.names[i] for i in blended.argmax(axis=1)] == [
        "CT Renal Stone Protocol", "US Abdomen Right Upper Quadrant"]
    suggestion = classifier.score_orders([fields[0]])[0]
    assert suggestion.protocol == "CT Renal Stone Protocol"
    # a site catalog re-keys the lexical rows with the head's
    site = Catalog([*catalog.protocols[:3], Protocol(name="Site Special", modality="CT",
                                                     body_region="abdomen", contrast="none")])
    classifier.catalog = site
    assert classifier.lexical.names == tuple(site.names)


def test_radproto_calibrate_fits_and_saves_the_blend(catalog, tmp_path, capsys):
    from test_train_support import tiny_llama as build

    model, tokenizer = build(hidden=32, layers=1)
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    config = ModelConfig(base_model=str(base), quantization="none")
    classifier = ProtocolClassifier(model.eval(), tokenizer, catalog, config=config)
    classifier.save(tmp_path / "model")
    data = rows()  # every phrasing in both files, with other notes
    train = [r for r in data if int(r["notes"].split()[1]) < 8]
    tune = [r for r in data if int(r["notes"].split()[1]) >= 8]
    train_file, tune_file = tmp_path / "train.jsonl", tmp_path / "tune.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train), "utf-8")
    tune_file.write_text("".join(json.dumps(r) + "\n" for r in tune), "utf-8")
    out = tmp_path / "calibrated"
    assert main(["calibrate", "--model", str(tmp_path / "model"), "--data", str(tune_file),
                 "--lexical-data", str(train_file), "--out", str(out),
                 "--tracking-uri", ""]) == 0
    printed = capsys.readouterr().out
    fitted = json.loads(printed[:printed.rindex("}") + 1])
    # a random head knows nothing, the words know everything: the blend follows the words
    assert fitted["head_top1"] < 0.5
    assert fitted["lexical_weight"] > 0
    assert fitted["lexical_top1"] > 0.9 and fitted["top1"] > 0.9
    assert fitted["lexical_fitted_on"] == rows_fingerprint(train)
    assert (out / LEXICAL_WEIGHTS).is_file()
    record = json.loads((out / MODEL_FILE).read_text("utf-8"))
    assert record["lexical_weight"] == fitted["lexical_weight"]
    loaded = ProtocolClassifier.load(out)
    assert loaded.lexical is not None
    assert loaded.lexical.fitted_on == rows_fingerprint(train)
    assert loaded.temperature == pytest.approx(fitted["temperature"])
    suggestion = loaded.score_orders([{"history": "flank pain haematuria colic"}])[0]
    assert suggestion.protocol == "CT Renal Stone Protocol"

    # radproto eval: the model's own threshold on the file, and calibration cross-fitted on it
    report = tmp_path / "report"
    assert main(["eval", "--model", str(out), "--data", str(tune_file), "--out", str(report),
                 "--baseline-train", str(train_file), "--cross-fit", "3",
                 "--tracking-uri", ""]) == 0
    metrics = json.loads((report / "metrics.json").read_text("utf-8"))
    assert metrics["abstain_threshold"] == pytest.approx(fitted["abstain_threshold"])
    assert 0 < metrics["threshold_accepted"] <= 1
    assert metrics["cross_fit_folds"] == 3 and metrics["cross_fit_top1"] > 0.9
    assert 0 <= metrics["cross_fit_ece"] < 0.2
    assert "Calibration fitted on this file itself (3-fold" in (report / "report.md").read_text()

    # no training file beside the data and none named: the baseline is the model's own
    # lexical half (the same fit on the model's training data), not a regenerated corpus
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "tune.jsonl").write_text(tune_file.read_text("utf-8"), "utf-8")
    assert main(["eval", "--model", str(out), "--data", str(alone / "tune.jsonl"),
                 "--out", str(tmp_path / "report2"), "--tracking-uri", ""]) == 0
    metrics = json.loads((tmp_path / "report2" / "metrics.json").read_text("utf-8"))
    assert "own TF-IDF half" in metrics["baseline_train"]
    assert "baseline_n_train" not in metrics
    assert metrics["baseline_top1"] == pytest.approx(fitted["lexical_top1"])


def test_cross_fitting_judges_each_order_by_a_fit_on_the_other_folds():
    from radproto.training.calibrate import cross_fitted

    rng = np.random.default_rng(3)
    n, k = 120, 6
    labels = rng.integers(0, k, n)
    head = rng.normal(size=(n, k))
    head[np.arange(n), labels] += 2.0  # the head knows something
    lexical = np.log(np.full((n, k), 1.0 / k))  # the words know nothing
    calibrated, accepted = cross_fitted(head, lexical, labels, folds=4, seed=0)
    assert calibrated.shape == (n, k) and accepted.shape == (n,)
    assert np.allclose(np.exp(calibrated).sum(axis=1), 1.0)
    assert (calibrated.argmax(axis=1) == head.argmax(axis=1)).all()  # scaling keeps the order
    # an order's own label never reaches its fit: relabelling it leaves its scores alone,
    # while the orders of the other folds (whose fit it joins) move
    relabelled = labels.copy()
    relabelled[0] = (labels[0] + 1) % k
    again, _ = cross_fitted(head, lexical, relabelled, folds=4, seed=0)
    assert np.allclose(again[0], calibrated[0])
    assert not np.allclose(again, calibrated)
    # the accepted orders are the confident ones
    confidence = np.exp(calibrated).max(axis=1)
    if accepted.any() and (~accepted).any():
        assert confidence[accepted].mean() > confidence[~accepted].mean()
    with pytest.raises(ValueError):
        cross_fitted(head[:3], lexical[:3], labels[:3], folds=4)


def test_training_refuses_a_missing_calibration_file_before_it_trains(tmp_path):
    from radproto.model.errors import ConfigError
    from radproto.training.config import load_preset
    from radproto.training.finetune import train

    config = load_preset("tiny-test").replace(
        calibration_data=str(tmp_path / "nowhere.jsonl"), out_dir=str(tmp_path / "m"))
    with pytest.raises(ConfigError) as caught:
        train(config, default_catalog(), progress=False)
    assert caught.value.field == "calibration_data"
    assert not (tmp_path / "m").exists()  # nothing was trained or written
