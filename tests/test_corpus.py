"""The synthetic corpus: determinism, split invariants, modifiers that change the label."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest

from radproto.cli import main
from radproto.model.catalog import Catalog, Protocol, default_catalog
from radproto.model.order import ORDER_FILE_FIELDS
from radproto.training.corpus import (
    DEFAULT_DEV_SET,
    STYLES,
    generate_examples,
    normalize_text,
    write_corpus,
)
from radproto.training.orderfile import read_orders, write_orders

CATALOG = default_catalog()
SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return generate_examples(CATALOG, seed=5, size=12000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, float]:
    """The corpus at its default size, as the CLI writes it (less the baseline, which trains
    a TF-IDF model for a minute), with the time it took."""
    out = tmp_path_factory.mktemp("corpus")
    started = time.perf_counter()
    report = write_corpus(out, catalog=CATALOG, baseline=False)
    return out, report, time.perf_counter() - started


def _text(row: dict) -> str:
    return " ".join(row[name] for name in ORDER_FILE_FIELDS)

def test_a_lab_value_that_has_its_unit_keeps_it_alone():
    """with_units adds a unit (or an SI conversion) to a bare lab value, never a second unit
    to one written with its own; it draws the same random numbers either way, so fixing the
    doubled units (stop 18) changed a corpus only in the rows that had them."""
    import random

    from radproto.training.knowledge_variety import with_units

    for seed in range(40):
        for si in (False, True):
            with_unit, bare = random.Random(seed), random.Random(seed)
            text = with_units("eGFR 43 mL/min/1.73m2, Cr 2.1 mg/dL", with_unit, si)
            assert text.count("/") == 3  # the two units as written, nothing added
            assert "43 mL/min/1.73m2," in text and text.endswith(" 2.1 mg/dL")
            written = with_units("eGFR 43, Cr 2.1", bare, si)
            assert with_unit.random() == bare.random()  # the same draws
            assert "43" in written and ("2.1" in written or "mol/L" in written)


def test_same_seed_same_examples_other_seed_other_examples() -> None:
    first = generate_examples(CATALOG, seed=3, size=800)
    assert first == generate_examples(CATALOG, seed=3, size=800)
    other = generate_examples(CATALOG, seed=4, size=800)
    assert sum(a["history"] == b["history"] for a, b in zip(first, other, strict=True)) < 40


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    dev = tmp_path / "dev.jsonl"  # the report's baseline figures must be reproducible too
    _write_fake_dev(dev)
    write_corpus(tmp_path / "a", catalog=CATALOG, seed=21, size=1500, dev_set=dev)
    write_corpus(tmp_path / "b", catalog=CATALOG, seed=21, size=1500, dev_set=dev)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "## TF-IDF baseline" in (tmp_path / "a" / "report.md").read_text("utf-8")
    assert names == ["report.md", "test.jsonl", "test.parquet", "train.jsonl", "train.parquet",
                     "validation.jsonl", "validation.parquet"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    write_corpus(tmp_path / "c", catalog=CATALOG, seed=22, size=1500)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (
        tmp_path / "c" / "train.jsonl").read_bytes()


def test_default_corpus_is_big_balanced_and_fast(corpus) -> None:
    out, report, seconds = corpus
    assert seconds < 60
    assert sum(report.splits.values()) >= 20000
    for name, counts in report.per_protocol.items():
        assert sum(counts.values()) >= 250, name
    assert set(report.per_style) == set(STYLES)
    assert "Wrote" in report.summary() and str(out) in report.summary()
    markdown = (out / "report.md").read_text("utf-8")
    for needle in [*CATALOG.names, *STYLES, "contrast_allergy", "no_pacemaker", "validation"]:
        assert needle in markdown


def test_splits_have_no_shared_text_and_no_unseen_test_label(corpus) -> None:
    out, report, _ = corpus
    splits = {name: read_orders(out / f"{name}.jsonl", require_label=True) for name in SPLITS}
    keys = {name: [normalize_text(row) for row in rows] for name, rows in splits.items()}
    all_keys = [key for name in SPLITS for key in keys[name]]
    assert len(all_keys) == len(set(all_keys))  # no duplicate within or across splits
    train_labels = {row["label"] for row in splits["train"]}
    for name in ("validation", "test"):
        assert {row["label"] for row in splits[name]} <= train_labels
    total = sum(len(rows) for rows in splits.values())
    assert 0.78 < len(splits["train"]) / total < 0.82
    assert {name: len(rows) for name, rows in splits.items()} == report.splits
    assert all(row["label"] in CATALOG for rows in splits.values() for row in rows)


def test_parquet_twins_hold_the_same_rows(corpus) -> None:
    out, _, _ = corpus
    jsonl = read_orders(out / "test.jsonl")
    parquet = read_orders(out / "test.parquet")
    assert len(jsonl) == len(parquet)
    for a, b in zip(jsonl, parquet, strict=True):
        assert {k: a[k] for k in (*ORDER_FILE_FIELDS, "label", "id", "style")} == {
            k: b[k] for k in (*ORDER_FILE_FIELDS, "label", "id", "style")}
        assert list(b["modifiers"]) == a["modifiers"]


def test_rows_have_the_order_file_fields(examples) -> None:
    for row in examples[:500]:
        for name in (*ORDER_FILE_FIELDS, "label", "style", "id"):
            assert isinstance(row[name], str)
        assert isinstance(row["modifiers"], list)
        assert row["history"] or row["diagnosis"] or row["notes"]
    assert len({row["id"] for row in examples}) == len(examples)
    exams = Counter("precise" if r["ordered_exam"] == r["label"] else
                    "empty" if not r["ordered_exam"] else "other" for r in examples)
    assert exams["empty"] > 0.15 * len(examples) and exams["other"] > 0.5 * len(examples)


def _routes(examples, source: str, modifier: str) -> Counter:
    return Counter(r["label"] for r in examples
                   if r["source"] == source and modifier in r["modifiers"])


def test_modifiers_change_the_label_as_a_radiologist_would(examples) -> None:
    vq, ctpa = "NM Lung Ventilation Perfusion", "CTA Chest Pulmonary Embolism"
    assert set(_routes(examples, ctpa, "contrast_allergy")) == {vq}
    assert set(_routes(examples, ctpa, "renal_failure")) == {vq}
    assert set(_routes(examples, ctpa, "normal_cxr")) == {vq}
    assert set(_routes(examples, ctpa, "abnormal_cxr")) == {ctpa}
    brain = "MRI Brain W and WO Contrast"
    assert set(_routes(examples, brain, "pacemaker")) == {"CT Head W and WO Contrast"}
    assert set(_routes(examples, brain, "claustrophobia")) == {"CT Head W and WO Contrast"}
    lumbar = "MRI Lumbar Spine WO Contrast"
    assert set(_routes(examples, lumbar, "prior_spine_surgery")) == {
        "MRI Lumbar Spine W and WO Contrast"}
    assert set(_routes(examples, lumbar, "pacemaker")) == {"CT Lumbar Spine WO Contrast"}
    stroke = "scenario:stroke"
    assert set(_routes(examples, stroke, "stroke_acute")) == {"CTA Head and Neck"}
    assert set(_routes(examples, stroke, "stroke_extended")) == {"CT Brain Perfusion"}
    assert set(_routes(examples, stroke, "stroke_remote")) == {"MRI Brain WO Contrast"}
    hematuria = "scenario:hematuria"
    assert set(_routes(examples, hematuria, "hematuria_painful")) == {"CT Renal Stone Protocol"}
    painless = _routes(examples, hematuria, "hematuria_painless")
    assert set(painless) == {"CT Urography", "US Renal"}
    for row in examples:  # painless hematuria goes to US only with a reason for it
        if row["source"] == hematuria and row["label"] == "US Renal":
            assert {"renal_failure", "pregnancy"} & set(row["modifiers"])
    # no non-contrast CT abdomen/pelvis in the default catalog: that redirect is not made
    # (and a severe allergy is never written on an order that keeps its contrast CT)
    assert not _routes(examples, "CT Abdomen Pelvis W Contrast", "contrast_allergy")


_EVIDENCE = {
    "pacemaker": r"pacemaker|pacer|PPM|AICD|ICD\b|implant|stimulator|clip|foreign body|"
                 r"shrapnel|device|fragment",
    "claustrophobia": r"claustroph|MRI|scanner",
    "contrast_allergy": r"contrast|dye",
    "renal_failure": r"GFR|ESRD|ESKD|ESRF|dialysis|\bHD\b|CKD|\bPD\b|\bS?Cr\b|creat",
    "pregnancy": r"pregnan|gestation|IUP|G\dP\d|/40",
    "weight_limit": r"\bkg\b|BMI|MRI|MR\b",
    "prior_spine_surgery": r"laminectomy|discectomy|fusion|decompression|back surgery|TLIF|"
                           r"post-op spine",
    "stroke_extended": r"wake-up|LKW|onset|last known well|last seen",
}


def test_the_text_carries_the_evidence_of_each_modifier(examples) -> None:
    for row in examples:
        if row["style"] == "typo":  # misspelled on purpose
            continue
        for key in row["modifiers"]:
            if key in _EVIDENCE:
                assert re.search(_EVIDENCE[key], _text(row), re.I), (key, row)


def test_denials_are_frequent_and_never_change_the_label(examples) -> None:
    denied = Counter(m for r in examples for m in r["modifiers"] if m.startswith("no_"))
    for key in ("contrast_allergy", "renal_failure", "pacemaker", "claustrophobia",
                "prior_spine_surgery", "trauma", "pregnancy"):
        assert denied["no_" + key] >= 60, key
    for row in examples:
        keys = set(row["modifiers"])
        assert not any(k.startswith("no_") and k[3:] in keys for k in keys), row
        if row["source"] != row["label"]:  # a redirect: a positive modifier made it
            assert any(not k.startswith("no_") for k in keys), row
    # the keyword alone must not give the answer away: many mentions are denials
    for word, changed in (("pacemaker", "CT Head W and WO Contrast"),
                          ("contrast allergy", "NM Lung Ventilation Perfusion")):
        mentions = [r for r in examples if word in _text(r).lower()]
        denials = [r for r in mentions if any(m.startswith("no_") for m in r["modifiers"])]
        assert len(denials) > 0.3 * len(mentions), word
        assert Counter(r["label"] for r in denials)[changed] < 0.05 * len(denials)


def test_denials_do_not_contradict_the_indication(examples) -> None:
    for row in examples:
        if "no_trauma" in row["modifiers"] and row["style"] != "typo":
            text = _text(row).lower()
            text = re.sub(r"denies trauma|no trauma|no known trauma|atraumatic|no recent fall",
                          "", text)
            assert not re.search(r"\bmvc\b|assault|fracture|\bfall\b|trauma(?!tic)", text), row
        if "no_pregnancy" in row["modifiers"]:
            assert row["label"] != "US Obstetric First Trimester"
        if row["label"] == "US Obstetric First Trimester" or "pregnancy" in row["modifiers"]:
            assert not re.search(r"\bmale\b|\d+ ?M\b", row["history"]), row


def test_a_site_protocol_gets_examples_and_redirects_follow_the_catalog() -> None:
    site = Catalog([
        Protocol("CT Abdomen Pelvis WO Contrast", "CT", "abdomen/pelvis", "none",
                 indications=("abdominal pain with iodinated contrast allergy",)),
        Protocol("XR Hand 3 Views", "XR", "hand", "none",
                 indications=("hand trauma", "suspected scaphoid fracture")),
        Protocol("DXA Bone Density", "DXA", "", "none"),
    ], source="site.csv")
    catalog = CATALOG.extended_with(site)
    rows = generate_examples(catalog, seed=2, size=len(catalog) * 60)
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == set(catalog.names)
    hand = [r for r in rows if r["label"] == "XR Hand 3 Views" and r["style"] != "typo"]
    assert all(re.search(r"hand|scaphoid", _text(r), re.I) for r in hand)
    wo = _routes(rows, "CT Abdomen Pelvis W Contrast", "contrast_allergy")
    assert set(wo) == {"CT Abdomen Pelvis WO Contrast"}
    # a catalog that replaces the default: labels stay inside it
    small = Catalog([CATALOG.get("CTA Chest Pulmonary Embolism"), site.protocols[1]])
    rows = generate_examples(small, seed=2, size=200)
    assert {r["label"] for r in rows} == set(small.names)


def test_cli_writes_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["corpus", "--out", str(tmp_path), "--seed", "9", "--size", "600"]) == 0
    assert "Wrote" in capsys.readouterr().out
    rows = read_orders(tmp_path / "train.parquet", require_label=True)
    assert 400 < len(rows) < 600


def _write_fake_dev(path: Path) -> None:
    """A stand-in development file (synthetic rows with a style and a difficulty)."""
    rows = generate_examples(CATALOG, seed=99, size=120)
    for i, row in enumerate(rows):
        row["style"] = ("terse", "messy")[i % 2]
        row["difficulty"] = ("easy", "medium", "hard")[i % 3]
    write_orders(path, rows)


def test_the_report_scores_tfidf_on_the_test_split_and_the_dev_set(
        tmp_path: Path) -> None:
    dev = tmp_path / "dev.jsonl"
    _write_fake_dev(dev)
    report = write_corpus(tmp_path / "c", catalog=CATALOG, seed=3, size=1200, dev_set=dev)
    assert set(report.baseline) == {"test", "dev"}
    assert report.baseline["dev"]["n"] == 120
    assert set(report.baseline["dev"]["by_difficulty"]) == {"easy", "medium", "hard"}
    assert set(report.baseline["dev"]["by_style"]) == {"terse", "messy"}
    for scores in report.baseline.values():
        assert 0 <= scores["top1"] <= scores["top3"] <= 1
    markdown = (tmp_path / "c" / "report.md").read_text("utf-8")
    assert "### dev by difficulty" in markdown and "| hard |" in markdown
    assert "TF-IDF baseline trained on train" in report.summary()
    absent = write_corpus(tmp_path / "d", catalog=CATALOG, seed=3, size=600,
                          dev_set=tmp_path / "none.jsonl")
    assert set(absent.baseline) == {"test"}


def _order_text(row: dict) -> str:
    text = " ".join(str(row.get(k) or "") for k in ("history", "diagnosis", "notes"))
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def test_no_dev_order_is_in_the_corpus(corpus) -> None:
    """The sealed development orders must not leak into the generated corpus (only the count
    is reported, never the orders)."""
    if not DEFAULT_DEV_SET.is_file():
        pytest.skip("eval/dev.jsonl is absent")
    dev = {_order_text(row) for row in read_orders(DEFAULT_DEV_SET)} - {""}
    out, _, _ = corpus
    generated = {_order_text(row) for name in SPLITS
                 for row in read_orders(out / f"{name}.jsonl")}
    assert len(dev) > 0
    leaked = len(dev & generated)
    assert leaked == 0, f"{leaked} development orders appear in the corpus"


def test_the_hand_written_sets_stay_apart() -> None:
    """tune.jsonl and hand.jsonl are training data, calib.jsonl the fitting set of the shipped
    model: no development order may appear in any of them, nor a calibration order in the
    training sets; ids are unique across all four and every label is a catalog name."""
    sets = {name: DEFAULT_DEV_SET.with_name(f"{name}.jsonl")
            for name in ("dev", "tune", "calib", "hand")}
    if not all(path.is_file() for path in sets.values()):
        pytest.skip("an eval/ set is absent")
    rows = {name: read_orders(path, require_label=True) for name, path in sets.items()}
    texts = {name: {_order_text(r) for r in part} - {""} for name, part in rows.items()}
    assert all(len(t) >= 300 for t in texts.values())
    for training in ("tune", "hand"):
        assert not texts["dev"] & texts[training], f"development orders in {training}.jsonl"
        assert not texts["calib"] & texts[training], f"calibration orders in {training}.jsonl"
    assert not texts["dev"] & texts["calib"], "development orders in the calibration orders"
    ids = [r["id"] for part in rows.values() for r in part]
    assert len(ids) == len(set(ids))
    names = set(default_catalog().names)
    assert all(r["label"] in names for part in rows.values() for r in part)


def test_new_modifiers_redirect_and_their_denials_do_not(examples) -> None:
    obstetric = "US Obstetric First Trimester"
    assert set(_routes(examples, "CT Abdomen Pelvis W Contrast", "early_pregnancy")) == {
        obstetric}
    assert set(_routes(examples, "US Pelvis Transabdominal and Transvaginal",
                       "early_pregnancy")) == {obstetric}
    assert set(_routes(examples, "scenario:stroke", "stroke_late")) == {"CT Head WO Contrast"}
    assert set(_routes(examples, "MRI Brain W and WO Contrast", "pregnancy")) == {
        "MRI Brain WO Contrast"}
    # dialysis or a low eGFR takes the contrast away; a moderate eGFR (a denial) does not
    assert set(_routes(examples, "CT Chest W Contrast", "renal_failure")) == {
        "CT Chest WO Contrast"}
    kept = Counter(r["label"] for r in examples if r["source"] == "CT Chest W Contrast"
                   and "no_renal_failure" in r["modifiers"]
                   and all(k.startswith("no_") for k in r["modifiers"]))
    assert kept and set(kept) == {"CT Chest W Contrast"}
    for row in examples:
        keys = set(row["modifiers"])
        if "no_early_pregnancy" in keys or "no_pregnancy" in keys:
            assert row["label"] != obstetric, row
        only_denials = all(k.startswith("no_") for k in keys)
        if ("no_contrast_allergy" in keys and only_denials
                and row["source"] == "CTA Chest Pulmonary Embolism"):
            assert row["label"] == "CTA Chest Pulmonary Embolism", row  # mild hives: premedicate
        if {"early_pregnancy", "pregnancy"} & keys:  # never denied beside its own evidence
            assert not {"no_pregnancy", "no_early_pregnancy"} & keys, row


def test_a_redirected_order_often_names_the_study_it_rules_out(examples) -> None:
    vq = [r for r in examples if r["label"] == "NM Lung Ventilation Perfusion"
          and r["source"] == "CTA Chest Pulmonary Embolism"]
    named = [r for r in vq if re.search(r"\bCTA?\b|CTPA|CT chest", r["ordered_exam"], re.I)]
    assert len(named) > 0.1 * len(vq)


def test_dialysis_and_moderate_ckd_are_written_as_referrers_write_them(examples) -> None:
    rows = [r for r in examples if r["label"] == "CT Chest WO Contrast"
            and "renal_failure" in r["modifiers"]]
    texts = " ".join(_text(r) for r in rows)
    assert re.search(r"\bHD\b|dialysis", texts) and re.search(r"\bS?Cr\b|creat", texts, re.I)
    denials = " ".join(_text(r) for r in examples if "no_renal_failure" in r["modifiers"]
                       and r["label"] == "CT Chest W Contrast")
    assert re.search(r"eGFR (3\d|4\d|5\d)\b", denials)
