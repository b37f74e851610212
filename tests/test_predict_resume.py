"""radproto predict: every row once, keyed by id or index, resumable after interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radproto.model.catalog import default_catalog
from radproto.model.errors import OrderFileError
from radproto.training.orderfile import write_orders
from radproto.training.predict import done_keys, predict_file


def _rows(n: int, *, ids: bool = True) -> list[dict]:
    exams = ["CT head without contrast", "MRI brain with and without contrast",
             "US thyroid", "CT chest PE protocol"]
    rows = []
    for i in range(n):
        row = {"ordered_exam": exams[i % 4], "history": f"case {i}", "diagnosis": "",
               "notes": ""}
        if ids:
            row["id"] = f"ord-{i:03d}"
        rows.append(row)
    return rows


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_interrupted_run_resumes_without_redoing_rows(tmp_path: Path,
                                                      keyword_classifier) -> None:
    source = tmp_path / "orders.jsonl"
    write_orders(source, _rows(23))
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    catalog = default_catalog()
    counts = predict_file("unused", source, full, catalog=catalog, batch_size=5,
                          classifier=keyword_classifier, progress=False)
    assert counts == {"total": 23, "skipped": 0, "written": 23}

    first = predict_file("unused", source, part, catalog=catalog, batch_size=5,
                         classifier=keyword_classifier, progress=False, max_batches=2)
    assert first["written"] == 10 and len(_lines(part)) == 10
    second = predict_file("unused", source, part, catalog=catalog, batch_size=5,
                          classifier=keyword_classifier, progress=False)
    assert second == {"total": 23, "skipped": 10, "written": 13}
    a, b = _lines(full), _lines(part)
    assert [r["key"] for r in b] == [f"ord-{i:03d}" for i in range(23)]

    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "created_at"}

    assert [strip(r) for r in a] == [strip(r) for r in b]
    third = predict_file("unused", source, part, catalog=catalog, batch_size=5,
                         classifier=keyword_classifier, progress=False)
    assert third == {"total": 23, "skipped": 23, "written": 0}
    assert {"protocol", "confidence", "abstained", "top3", "model_version"} <= set(b[0])


def test_rows_without_id_are_keyed_by_index_and_a_torn_line_is_redone(
        tmp_path: Path, keyword_classifier) -> None:
    source = tmp_path / "orders.csv"
    write_orders(source, _rows(7, ids=False))
    out = tmp_path / "out.jsonl"
    predict_file("unused", source, out, catalog=default_catalog(), batch_size=3,
                 classifier=keyword_classifier, progress=False, max_batches=1)
    with out.open("a") as handle:  # a write cut off by a kill
        handle.write('{"key": "row-3", "protoc')
    assert done_keys(out) == {"row-0", "row-1", "row-2"}
    counts = predict_file("unused", source, out, catalog=default_catalog(), batch_size=3,
                          classifier=keyword_classifier, progress=False)
    assert counts["written"] == 4
    assert [r["key"] for r in _lines(out)] == [f"row-{i}" for i in range(7)]


def test_duplicate_ids_and_foreign_output_are_refused(tmp_path: Path,
                                                      keyword_classifier) -> None:
    source = tmp_path / "orders.jsonl"
    rows = _rows(3)
    rows[2]["id"] = rows[0]["id"]
    write_orders(source, rows)
    with pytest.raises(OrderFileError, match="duplicate id"):
        predict_file("unused", source, tmp_path / "o.jsonl", catalog=default_catalog(),
                     classifier=keyword_classifier, progress=False)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"not": "a prediction"}\n')
    write_orders(source, _rows(3))
    with pytest.raises(OrderFileError, match="not a prediction"):
        predict_file("unused", source, foreign, catalog=default_catalog(),
                     classifier=keyword_classifier, progress=False)


def test_predict_cli_with_a_trained_model(tmp_path: Path) -> None:
    from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

    from radproto.cli import main
    from radproto.training.finetune import train

    catalog = small_catalog()
    corpus = write_small_corpus(tmp_path / "corpus", catalog)
    train(tiny_config(write_tiny_base(tmp_path / "base"), corpus, tmp_path / "model",
                      max_steps=1, calibrate=False), catalog, progress=False)
    out = tmp_path / "pred.jsonl"
    args = ["predict", "--input", str(corpus / "test.jsonl"), "--output", str(out),
            "--model", str(tmp_path / "model"), "--batch-size", "8", "--tracking-uri", "",
            "--log-level", "WARNING"]
    assert main(args) == 0
    lines = _lines(out)
    assert len(lines) == 24 and all(r["protocol"] in catalog or r["protocol"]
                                    in default_catalog() for r in lines)
    assert main(args) == 0 and len(_lines(out)) == 24  # a rerun adds nothing
