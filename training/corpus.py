"""The synthetic training corpus: order texts written from clinical knowledge, with labels.

How one example is made (`generate_examples`, top to bottom):

1. The target protocols are taken round-robin over the catalog, so every protocol gets the
   same share. For a target, a *route* is drawn: its own indications ("direct"), or another
   protocol's or scenario's indication plus the modifiers that redirect it here (suspected PE
   + severe contrast allergy -> V/Q scan). See `clinical_knowledge.REDIRECTS`.
2. The facts are drawn: age and sex, one indication phrase, findings, history, labs, meds, the
   route's modifier evidence, sometimes a modifier that is present but does not matter for
   this protocol, and often denials ("no contrast allergy", "eGFR 85", "denies trauma") that
   must not change it.
3. The facts are written in one style (terse, template, narrative, coded, typo) into the
   order-file fields, and an ordered-exam text is chosen: precise, vague or empty.

The steps live in their own modules: `corpus_facts` (routes and facts), `corpus_style`
(the styles and roughening), `corpus_exam` (the ordered exam) and `corpus_report` (report.md).
`write_corpus` then drops duplicates (same normalized text), splits 80/10/10 so that every
validation and test label also occurs in training, and writes JSONL, Parquet and report.md.
Everything is drawn from `random.Random(seed)` (and the split from its own seeded generator),
never from global state or set order: the same seed gives byte-identical files.
"""

from __future__ import annotations

import random
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any

from radproto.model.catalog import Catalog, default_catalog
from radproto.model.order import ORDER_FILE_FIELDS
from radproto.training.clinical_knowledge import KNOWLEDGE
from radproto.training.corpus_exam import first_thoughts_of, neighbours_of, ordered_exam
from radproto.training.corpus_facts import draw_facts, plan_routes
from radproto.training.corpus_report import SPLITS, CorpusReport
from radproto.training.corpus_style import STYLE_WEIGHTS, STYLES, WRITERS, roughen, tidy
from radproto.training.orderfile import write_orders

__all__ = [
    "DEFAULT_DEV_SET",
    "SPLITS",
    "STYLES",
    "CorpusReport",
    "deduplicate",
    "generate_examples",
    "normalize_text",
    "split_rows",
    "write_corpus",
]

#: The independently written development orders (sealed: only aggregate figures are shown).
DEFAULT_DEV_SET = Path(__file__).resolve().parents[1] / "eval" / "dev.jsonl"
_SPLIT_SHARES = {"validation": 0.1, "test": 0.1}


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------

def generate_examples(catalog: Catalog | None = None, *, seed: int = 13,
                      size: int = 24000) -> list[dict[str, Any]]:
    """`size` labelled orders (before dedup), the same ones for the same seed and catalog."""
    catalog = catalog or default_catalog()
    rng = random.Random(seed)
    plan = plan_routes(catalog)
    labels = [name for name in catalog.names if plan[name]]
    neighbours = neighbours_of(catalog)
    first_thoughts = first_thoughts_of(catalog, plan)
    rows = []
    for index in range(size):
        target = catalog.get(labels[index % len(labels)])
        assert target is not None
        routes = plan[target.name]
        route = rng.choices(routes, weights=[r.weight for r in routes])[0]
        facts = draw_facts(route, target, rng)
        style = rng.choices(STYLES, weights=STYLE_WEIGHTS)[0]
        if style == "coded" and not facts.icd:
            style = "terse"  # a site protocol without ICD-10 knowledge
        fields = roughen(WRITERS[style](facts, rng), style, rng)
        rows.append({
            "id": f"syn-{seed}-{index:06d}",
            "ordered_exam": ordered_exam(route, target, rng, neighbours,
                                         first_thoughts),
            "history": tidy(fields["history"]),
            "diagnosis": tidy(fields["diagnosis"]),
            "notes": tidy(fields["notes"]),
            "label": target.name,
            "style": style,
            "modifiers": facts.modifiers,
            "source": route.source.name,
        })
    return rows


_PUNCTUATION = str.maketrans({ch: " " for ch in string.punctuation})


def normalize_text(row: dict[str, Any]) -> str:
    """The dedup key: the order fields lowercased, without punctuation, whitespace collapsed."""
    text = " ".join(str(row.get(name) or "") for name in ORDER_FILE_FIELDS)
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def deduplicate(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int]:
    """Rows without repeated normalized text (first kept); (rows, dropped, label conflicts)."""
    seen: dict[str, str] = {}
    kept, conflicts = [], 0
    for row in rows:
        key = normalize_text(row)
        if key in seen:
            conflicts += seen[key] != row["label"]
            continue
        seen[key] = row["label"]
        kept.append(row)
    return kept, len(rows) - len(kept), conflicts


def split_rows(rows: list[dict[str, Any]], rng: random.Random) -> dict[str, list[dict]]:
    """~80/10/10, every validation and test label also in train (others move to train)."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_val = round(len(rows) * _SPLIT_SHARES["validation"])
    n_test = round(len(rows) * _SPLIT_SHARES["test"])
    parts = {
        "validation": [rows[i] for i in order[:n_val]],
        "test": [rows[i] for i in order[n_val:n_val + n_test]],
        "train": [rows[i] for i in order[n_val + n_test:]],
    }
    trained = {row["label"] for row in parts["train"]}
    for name in ("validation", "test"):
        unseen = [row for row in parts[name] if row["label"] not in trained]
        parts["train"] += unseen
        parts[name] = [row for row in parts[name] if row["label"] in trained]
    return {name: parts[name] for name in SPLITS}


def write_corpus(out_dir: str | Path, *, catalog: Catalog | None = None, seed: int = 13,
                 size: int = 24000, baseline: bool = True,
                 dev_set: str | Path | None = DEFAULT_DEV_SET) -> CorpusReport:
    """Generate, dedupe and split the corpus; write JSONL + Parquet splits and report.md.

    With `baseline`, the report also holds TF-IDF + logistic regression trained on the train
    split and scored on the test split and, when the file exists, on `dev_set` (aggregate
    figures only). That training takes about a minute at the default size on 2 cores."""
    started = time.perf_counter()
    catalog = catalog or default_catalog()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = generate_examples(catalog, seed=seed, size=size)
    unique, duplicates, conflicts = deduplicate(rows)
    parts = split_rows(unique, random.Random(f"split-{seed}"))
    for name, part in parts.items():
        write_orders(out_dir / f"{name}.jsonl", part)
        write_orders(out_dir / f"{name}.parquet", part)
    report = CorpusReport(
        out_dir=out_dir, seed=seed, requested=size, generated=len(rows),
        duplicates=duplicates, conflicts=conflicts,
        splits={name: len(part) for name, part in parts.items()},
        per_protocol={name: Counter() for name in catalog.names},
        fallback_protocols=[p.name for p in catalog if p.name not in KNOWLEDGE],
    )
    if baseline and parts["train"]:
        report.baseline, report.dev_set = _score_baseline(parts, catalog, dev_set)
    for name, part in parts.items():
        for row in part:
            report.per_protocol[row["label"]][name] += 1
            report.per_style[row["style"]] += 1
            report.per_modifier.update(row["modifiers"])
            report.redirected += row["source"] != row["label"]
    (out_dir / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    report.seconds = time.perf_counter() - started
    return report


def _score_baseline(parts: dict[str, list[dict]], catalog: Catalog,
                    dev_set: str | Path | None) -> tuple[dict[str, dict[str, Any]], str]:
    """TF-IDF trained once on the train split, scored on the test split and the dev set."""
    from radproto.training.metrics import score_baseline, train_baseline
    from radproto.training.orderfile import read_orders

    names = catalog.names
    model = train_baseline(parts["train"], names)
    scores = {"test": score_baseline([], parts["test"], names, groups=(), model=model)}
    dev_path = Path(dev_set) if dev_set else None
    if dev_path is not None and dev_path.is_file():
        dev_rows = read_orders(dev_path, require_label=True)
        scores["dev"] = score_baseline([], dev_rows, names, model=model)
        return scores, dev_path.name
    return scores, ""
