"""radproto eval: metric definitions on hand-made cases, the report, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radproto.model.catalog import Catalog, default_catalog
from radproto.training.metrics import (
    accuracy_coverage_curve,
    classification_metrics,
    coverage_at,
    expected_calibration_error,
    semantic_similarity,
)
from radproto.training.report import build_report

NAMES = ("A", "B", "C", "D")


def _hand_made() -> tuple[np.ndarray, np.ndarray]:
    # 5 orders over 4 classes; predicted = argmax, confidence = max.
    probs = np.array([
        [0.90, 0.05, 0.03, 0.02],  # true A, predicted A (0.90)  correct
        [0.10, 0.80, 0.06, 0.04],  # true B, predicted B (0.80)  correct
        [0.60, 0.30, 0.05, 0.05],  # true B, predicted A (0.60)  wrong; B 2nd
        [0.05, 0.15, 0.70, 0.10],  # true C, predicted C (0.70)  correct
        [0.40, 0.35, 0.05, 0.20],  # true D, predicted A (0.40)  wrong; D 3rd
    ])
    labels = np.array([0, 1, 1, 2, 3])
    return probs, labels


def test_top_k_and_macro_f1_by_hand() -> None:
    probs, labels = _hand_made()
    m = classification_metrics(probs, labels, NAMES)
    assert m["n"] == 5
    assert m["top1"] == pytest.approx(3 / 5)
    assert m["top3"] == pytest.approx(5 / 5)
    # Per class: A: tp 1, fp 2, fn 0 -> P 1/3, R 1, F1 0.5; B: tp 1, fn 1 -> P 1, R 0.5,
    # F1 2/3; C: P 1, R 1, F1 1; D: F1 0. Macro over the 4 classes in the truth.
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1 + 0) / 4)
    assert m["per_protocol"]["A"]["precision"] == pytest.approx(1 / 3)
    assert m["per_protocol"]["B"]["recall"] == pytest.approx(0.5)
    assert m["per_protocol"]["D"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_ece_by_hand() -> None:
    probs, labels = _hand_made()
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # 10 bins: 0.9 -> bin (0.8, 0.9], 0.8 -> (0.7, 0.8], 0.6 -> (0.5, 0.6],
    # 0.7 -> (0.6, 0.7], 0.4 -> (0.3, 0.4]: one order per bin.
    ece, bins = expected_calibration_error(conf, correct, n_bins=10)
    expected = (abs(1 - 0.9) + abs(1 - 0.8) + abs(0 - 0.6) + abs(1 - 0.7) + abs(0 - 0.4)) / 5
    assert ece == pytest.approx(expected)
    assert sum(b["count"] for b in bins) == 5
    # Perfectly calibrated: every order at confidence 0.5, half of them right.
    ece, _ = expected_calibration_error(np.full(4, 0.5), np.array([1, 0, 1, 0]), n_bins=10)
    assert ece == pytest.approx(0.0)


def test_coverage_at_95_by_hand() -> None:
    probs, labels = _hand_made()
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Most confident first: 0.9 ok, 0.8 ok, 0.7 ok, 0.6 wrong, 0.4 wrong -> the top 3 (60%)
    # are 100% right; adding the 4th drops to 75%.
    coverage, threshold = coverage_at(conf, correct, 0.95)
    assert coverage == pytest.approx(3 / 5) and threshold == pytest.approx(0.7)
    assert coverage_at(conf, correct, 0.75) == (pytest.approx(4 / 5), pytest.approx(0.6))
    assert coverage_at(np.array([0.9]), np.array([False]))[0] == 0.0
    cov, acc, _ = accuracy_coverage_curve(conf, correct)
    np.testing.assert_allclose(cov, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(acc, [1, 1, 1, 0.75, 0.6])


def test_coverage_never_splits_tied_confidences() -> None:
    # Two orders tie at 0.9, one right one wrong: no threshold accepts only the right one.
    conf = np.array([0.9, 0.9, 0.5])
    correct = np.array([True, False, True])
    assert coverage_at(conf, correct, 0.95) == (0.0, 1.0)


def test_semantic_similarity_is_one_for_exact_and_lower_for_near_misses() -> None:
    names = ["CT Head WO Contrast", "CT Head W and WO Contrast", "US Thyroid"]
    assert semantic_similarity(names, names, names) == pytest.approx(1.0)
    near = semantic_similarity(["CT Head WO Contrast"], ["CT Head W and WO Contrast"], names)
    far = semantic_similarity(["US Thyroid"], ["CT Head W and WO Contrast"], names)
    assert 0.0 <= far < near < 1.0


def test_report_files_and_baseline(tmp_path: Path) -> None:
    catalog = Catalog(default_catalog().protocols[:3], source="<t>")
    names = catalog.names
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for i in range(60):
        k = i % 3
        rows.append({"ordered_exam": f"exam {names[k]}", "history": f"word{k} case {i}",
                     "diagnosis": "", "notes": "", "label": names[k]})
        labels.append(k)
    labels_arr = np.array(labels)
    log_probs = rng.normal(size=(60, 3))
    log_probs[np.arange(60), labels_arr] += 2.0
    build_report(log_probs, labels_arr, catalog, temperature=1.5,
                           out_dir=tmp_path, rows=rows, baseline_train=rows)
    for name in ("metrics.json", "report.md", "reliability.png", "coverage.png",
                 "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("top1", "top3", "macro_f1", "ece", "coverage_at_95", "baseline_top1", "n",
                "semantic_similarity"):
        assert key in saved
    assert saved["n"] == 60 and saved["temperature"] == 1.5
    assert saved["baseline_top1"] == pytest.approx(1.0)  # the words give the class away
    report = (tmp_path / "report.md").read_text()
    assert "![Reliability diagram](reliability.png)" in report
    assert "TF-IDF character" in report and "0.86" in report


def test_eval_cli_end_to_end(tmp_path: Path) -> None:
    from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

    from radproto.cli import main
    from radproto.training.finetune import train

    catalog = small_catalog()
    corpus = write_small_corpus(tmp_path / "corpus", catalog)
    config = tiny_config(write_tiny_base(tmp_path / "base"), corpus, tmp_path / "model",
                         max_steps=2)
    train(config, catalog, progress=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The CLI scores over the default catalog (58 protocols), as a site's eval would.
    code = main(["eval", "--data", str(corpus / "test.jsonl"), "--model",
                 str(tmp_path / "model"), "--out", str(tmp_path / "report"),
                 "--tracking-uri", uri, "--limit", "6", "--log-level", "WARNING"])
    assert code == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["baseline_n_train"] == 96
    assert 0.0 <= metrics["top1"] <= metrics["top3"] <= 1.0
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("radproto").experiment_id])
    assert any(r.data.tags.get("radproto.kind") == "evaluation" for r in runs)
