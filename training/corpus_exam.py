"""The ordered-exam field of a synthetic order: precise, vague, empty, or naming a
different study than the right protocol (as referrers often do)."""

from __future__ import annotations

import random
import re

from radproto.model.catalog import Catalog, Protocol
from radproto.training.clinical_knowledge import KNOWLEDGE, modality_words
from radproto.training.corpus_facts import Route
from radproto.training.knowledge_base import ProtocolKnowledge, fill

_EXAM_PRECISE, _EXAM_VAGUE = 0.2, 0.5  # else empty (~30% in real orders)
_P_EXAM_MISLEADING = 0.2  # of the non-empty: an exam naming a different study (~10% in real
# orders; trained at twice that so that the clinical text, not the exam name, decides)
_P_EXAM_FIRST_THOUGHT = 0.4  # of the non-empty, where a modifier decided: the study it
# rules out ("CTA chest PE" for a patient with anaphylaxis to contrast)
_P_EXAM_UPPER = 0.25  # RIS exam names are often upper case
_NEUTRAL_EXAMS = ("imaging", "see notes", "radiology consult", "imaging per radiology",
                  "protocol per radiologist")


# ---------------------------------------------------------------------------------------------
# Ordered exam: precise, vague or empty
# ---------------------------------------------------------------------------------------------

_CONTRAST_VARIANTS = (
    (" W and WO Contrast", (" with and without contrast", " w/wo", " w+w/o contrast",
                            " w/ & w/o contrast")),
    (" WO Contrast", (" without contrast", " w/o", " w/o contrast", " noncon")),
    (" W Contrast", (" with contrast", " w/ contrast", " w contrast", " with IV contrast")),
)


def _precise_exams(target: Protocol, known: ProtocolKnowledge | None) -> list[str]:
    names = [target.name, *target.aliases, *(known.precise_exams if known else ())]
    for suffix, variants in _CONTRAST_VARIANTS:
        if target.name.endswith(suffix):
            stem = target.name[: -len(suffix)]
            names += [stem + v for v in variants]
            break
    return names


def _vague_exams(target: Protocol, known: ProtocolKnowledge | None) -> tuple[str, ...]:
    if known and known.vague_exams:
        return known.vague_exams
    region = target.body_region.replace("/", " and ") or "body"
    return tuple(f"{word} {region}" for word in modality_words(target.modality))


def neighbours_of(catalog: Catalog) -> dict[str, list[Protocol]]:
    """For each protocol, the others a referrer might order instead: same body part (another
    modality or contrast) or same modality (a neighbouring part)."""
    def parts(p: Protocol) -> set[str]:
        return set(re.split(r"[/ ]", p.body_region)) - {"", "and"}
    out = {}
    for target in catalog:
        same_part = [p for p in catalog if p.name != target.name and parts(p) & parts(target)]
        same_modality = [p for p in catalog if p.name != target.name
                         and p.modality == target.modality and p not in same_part]
        out[target.name] = same_part + same_part + same_modality  # the same part twice as often
    return out


def first_thoughts_of(catalog: Catalog, plan: dict[str, list[Route]]) -> dict[str, list[Protocol]]:
    """For each source a modifier redirects from, the studies a referrer thinks of first: the
    source protocol itself (a CTPA ordered for a patient on dialysis), or for a scenario every
    protocol its modifiers lead to (a CTA ordered for a stroke past its window)."""
    reached: dict[str, list[str]] = {}
    for label, routes in plan.items():
        for route in routes:
            if route.modifiers and route.source.name != label:
                reached.setdefault(route.source.name, []).append(label)
    out = {}
    for source, labels in reached.items():
        own = catalog.get(source)
        names = [source] if own is not None else sorted(set(labels))
        out[source] = [p for p in (catalog.get(n) for n in names) if p is not None]
    return out


def ordered_exam(route: Route, target: Protocol, rng: random.Random,
                 neighbours: dict[str, list[Protocol]],
                 first_thoughts: dict[str, list[Protocol]] | None = None) -> str:
    exam = _exam_text(route, target, rng, neighbours, first_thoughts or {})
    if exam and rng.random() < _P_EXAM_UPPER:
        exam = exam.upper()
    return exam


def _named(other: Protocol, rng: random.Random) -> str:
    other_known = KNOWLEDGE.get(other.name)
    pool = (_precise_exams(other, other_known) if rng.random() < 0.5
            else list(_vague_exams(other, other_known)))
    return fill(rng.choice(pool), rng)


def _exam_text(route: Route, target: Protocol, rng: random.Random,
               neighbours: dict[str, list[Protocol]],
               first_thoughts: dict[str, list[Protocol]]) -> str:
    known = KNOWLEDGE.get(target.name)
    r = rng.random()
    if r < _EXAM_PRECISE + _EXAM_VAGUE and route.source.name != target.name:
        # a modifier decided: the referrer often ordered the study it rules out
        others = [p for p in first_thoughts.get(route.source.name, ()) if p.name != target.name]
        if others and rng.random() < _P_EXAM_FIRST_THOUGHT:
            return _named(rng.choice(others), rng)
    if r < _EXAM_PRECISE + _EXAM_VAGUE and neighbours[target.name] and (
            rng.random() < _P_EXAM_MISLEADING):
        # the referrer named another study
        return _named(rng.choice(neighbours[target.name]), rng)
    if r < _EXAM_PRECISE:
        return fill(rng.choice(_precise_exams(target, known)), rng)
    if r < _EXAM_PRECISE + _EXAM_VAGUE:
        pick = rng.random()
        if route.modifiers and pick < 0.3 and route.source.vague_exams:
            return fill(rng.choice(route.source.vague_exams), rng)  # what was asked for first
        if pick < 0.88:
            return fill(rng.choice(_vague_exams(target, known)), rng)
        return rng.choice(_NEUTRAL_EXAMS)
    return ""
