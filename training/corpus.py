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

`write_corpus` then drops duplicates (same normalized text), splits 80/10/10 so that every
validation and test label also occurs in training, and writes JSONL, Parquet and report.md.
Everything is drawn from `random.Random(seed)` (and the split from its own seeded generator),
never from global state or set order: the same seed gives byte-identical files.
"""

from __future__ import annotations

import random
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radproto.model.catalog import Catalog, Protocol, default_catalog
from radproto.model.order import ORDER_FILE_FIELDS
from radproto.training.clinical_knowledge import (
    KNOWLEDGE,
    MODIFIERS,
    REDIRECTS,
    fallback_knowledge,
    modality_words,
    neutral_modifiers,
    source_knowledge,
)
from radproto.training.knowledge_base import Indication, ProtocolKnowledge, fill
from radproto.training.knowledge_variety import (
    admin_item,
    britishize,
    misspell_common,
    noise_items,
    vary,
    with_units,
)
from radproto.training.orderfile import write_orders

STYLES: tuple[str, ...] = ("terse", "template", "narrative", "coded", "typo")
#: The independently written development orders (sealed: only aggregate figures are shown).
DEFAULT_DEV_SET = Path(__file__).resolve().parents[1] / "eval" / "dev.jsonl"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
_SPLIT_SHARES = {"validation": 0.1, "test": 0.1}

# How often things happen (per example).
_P_RELEVANT_DENIAL = 0.5  # a denial of a modifier that would matter for this protocol
_P_SECOND_DENIAL = 0.15
_P_STRAY_DENIAL = 0.15  # a denial unrelated to this protocol's decisions
_P_NEUTRAL_MODIFIER = 0.1  # a modifier present that does not matter here
_P_NOISE = 0.5  # comorbidities or routine medications that decide nothing
_P_ADMIN = 0.3  # ordering chatter ("STAT", "call results to ...")
_P_UNITS, _P_SI_UNITS = 0.45, 0.3  # labs written with units; of those, SI units
_SYNONYM_RATE = 0.35  # chance that each synonym pattern found is rewritten
_P_BRITISH = 0.1
_P_LOWER = 0.15  # a non-messy order typed in lower case
_EXAM_PRECISE, _EXAM_VAGUE = 0.2, 0.5  # else empty (~30% in real orders)
_P_EXAM_MISLEADING = 0.2  # of the non-empty: an exam naming a different study (~10% in real
# orders; trained at twice that so that the clinical text, not the exam name, decides)
_P_EXAM_UPPER = 0.25  # RIS exam names are often upper case
_NEUTRAL_EXAMS = ("imaging", "see notes", "radiology consult", "imaging per radiology",
                  "protocol per radiologist")


# ---------------------------------------------------------------------------------------------
# Routes: which knowledge (and which modifiers) an example for a protocol is written from
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    label: str
    source: ProtocolKnowledge
    modifiers: tuple[str, ...] = ()
    indications: tuple[int, ...] = ()  # empty: any
    weight: float = 1.0


def plan_routes(catalog: Catalog) -> dict[str, list[Route]]:
    """For each catalog protocol, the routes its examples are written from."""
    redirects: dict[str, list[Route]] = {name: [] for name in catalog.names}
    for redirect in REDIRECTS:
        target = next((catalog.get(t) for t in redirect.targets if catalog.get(t)), None)
        source = source_knowledge(redirect.source)
        if target is None or source is None:
            continue  # e.g. no non-contrast CT abdomen/pelvis in this catalog
        redirects[target.name].append(Route(target.name, source, redirect.modifiers,
                                            redirect.indications, redirect.weight))
    plan = {}
    for target in catalog:
        own = KNOWLEDGE.get(target.name)
        routes = redirects[target.name]
        if own is None and (target.indications or not routes):
            own = fallback_knowledge(target)  # a site's protocol: its catalog indications
        if own is not None and own.indications:
            direct_weight = max(1.0, sum(r.weight for r in routes) / 2)
            routes = [Route(target.name, own, weight=direct_weight), *routes]
        plan[target.name] = routes
    return plan


# ---------------------------------------------------------------------------------------------
# Facts: what one order says, before it is written in a style
# ---------------------------------------------------------------------------------------------

@dataclass
class Facts:
    age: int
    sex: str  # "female" | "male"
    show_demographics: bool
    indication: str
    icd: list[tuple[str, str]]
    findings: list[str]
    history: list[str]  # past history and risk factors
    extras: list[str]  # labs and medications
    evidence: list[str]  # modifier evidence (present facts)
    denials: list[str]
    modifiers: list[str]  # recorded keys: "pacemaker", "no_pacemaker", ...


def _draw_facts(route: Route, target: Protocol, rng: random.Random) -> Facts:
    source = route.source
    choices = route.indications or tuple(range(len(source.indications)))
    indication: Indication = source.indications[rng.choice(choices)]
    modifiers = [MODIFIERS[key] for key in route.modifiers]

    sex = indication.sex or source.sex
    lo, hi = indication.age or source.age
    for modifier in modifiers:
        if modifier.sex != "any":
            sex = modifier.sex
        if modifier.age:
            lo, hi = max(lo, modifier.age[0]), min(hi, modifier.age[1])
    if sex == "any":
        sex = rng.choice(("female", "male"))
    age = rng.randint(lo, max(lo, hi))

    present = list(route.modifiers)
    evidence = [fill(rng.choice(m.evidence), rng) for m in modifiers]
    icd = list(rng.sample(indication.icd, k=min(len(indication.icd), rng.choice((1, 1, 2)))))
    for modifier in modifiers:
        if modifier.icd and rng.random() < 0.5:
            icd.append(rng.choice(modifier.icd))

    neutral = [k for k in neutral_modifiers(target) if _fits(MODIFIERS[k], sex, age)]
    if route.modifiers == () and neutral and rng.random() < _P_NEUTRAL_MODIFIER:
        key = rng.choice(neutral)
        present.append(key)
        # "recurrent pain" after spine surgery belongs to a spine order, not to this one
        phrases = [e for e in MODIFIERS[key].evidence if not _SPINE_COMPLAINT.search(e)]
        evidence.append(fill(rng.choice(phrases), rng))

    # a denial must not contradict the indication ("denies trauma" on a facial fracture)
    said = " ".join(indication.phrases + tuple(text for _, text in indication.icd))
    deniable = [k for k, m in MODIFIERS.items() if m.negations and k not in present
                and _fits(m, sex, age)
                and not (m.contradicted_by and re.search(m.contradicted_by, said, re.I))]
    relevant = [k for k in source.negations if k in deniable]
    stray = [k for k in deniable if k not in relevant]
    denials, denied = [], []
    if relevant and rng.random() < _P_RELEVANT_DENIAL:
        denied.append(rng.choice(relevant))
        if rng.random() < _P_SECOND_DENIAL:
            denied.append(rng.choice(relevant + stray))
    elif stray and rng.random() < _P_STRAY_DENIAL:
        denied.append(rng.choice(stray))
    for key in dict.fromkeys(denied):  # ordered and unique
        denials.append(fill(rng.choice(MODIFIERS[key].negations), rng))
        present.append("no_" + key)

    def fits(item: str) -> bool:  # nor may a history item contradict a denial
        return _consistent(item, sex, present) and not any(
            MODIFIERS[k].contradicted_by and re.search(MODIFIERS[k].contradicted_by, item, re.I)
            for k in denied)

    findings = [fill(f, rng) for f in _some(tuple(filter(fits, indication.findings)), rng,
                                             (0, 1, 1, 2, 2))]
    history, extras = [], []
    measured = {f.split()[0] for f in findings if f.split()}
    for pool, chance, into in ((source.history, 0.5, history), (source.labs, 0.4, extras),
                               (source.meds, 0.3, extras)):
        # no second, different value for what a finding already measured ("TSH 0.2 ... TSH 2")
        pool = tuple(p for p in pool if fits(p) and p.split()[0] not in measured)
        if pool and rng.random() < chance:
            into.append(fill(rng.choice(pool), rng))
    if rng.random() < _P_NOISE:  # comorbidities and medications that decide nothing
        noise, meds = noise_items(rng, sex, None)
        into = extras if meds or rng.random() < 0.3 else history
        into.extend(item for item in noise if fits(item))
        rng.shuffle(into)
    admin = []
    if rng.random() < _P_ADMIN:
        admin = [admin_item(rng) for _ in range(rng.choice((1, 1, 2)))]
        admin = [a for a in admin if not ("weight_limit" in present and "weight" in a)]
    return Facts(
        age=age, sex=sex, show_demographics=rng.random() < 0.9,
        indication=fill(rng.choice(indication.phrases), rng), icd=icd, findings=findings,
        history=history, extras=extras, evidence=evidence,
        denials=_insert_anywhere(denials, admin, rng), modifiers=present,
    )


def _insert_anywhere(items: list[str], extra: list[str], rng: random.Random) -> list[str]:
    items = list(items)
    for item in extra:
        items.insert(rng.randint(0, len(items)), item)
    return items


_SPINE_COMPLAINT = re.compile(r"recurrent|failed back|radicular|pain|sciatica|sx|symptom|scar")
_FEMALE_ONLY = re.compile(r"\b(OCPs?|estrogen|tamoxifen|breast|ovar|endometri|PCOS|HRT|uter)",
                          re.I)
_MALE_ONLY = re.compile(r"\b(BPH|prostat)", re.I)
_RENAL_LAB = re.compile(r"\b(Cr|eGFR|BUN|ESRD|CKD)\b|dialysis")
_NOT_PREGNANT = re.compile(r"\b(OCPs?|estrogen|tamoxifen|HRT)\b|hCG neg|birth control|"
                           r"Xeljanz|postmenopausal", re.I)


def _consistent(item: str, sex: str, present: list[str]) -> bool:
    """False for a history item that would contradict the example's sex or modifiers."""
    if _FEMALE_ONLY.search(item) and sex != "female":
        return False
    if _MALE_ONLY.search(item) and sex != "male":
        return False
    if _RENAL_LAB.search(item) and {"renal_failure", "no_renal_failure"} & set(present):
        return False  # the modifier states the renal function; a second value could clash
    return not ("pregnancy" in present and _NOT_PREGNANT.search(item))


def _fits(modifier: Any, sex: str, age: int) -> bool:
    if modifier.sex != "any" and modifier.sex != sex:
        return False
    return not modifier.age or modifier.age[0] <= age <= modifier.age[1]


def _some(pool: tuple[str, ...], rng: random.Random, counts: tuple[int, ...]) -> list[str]:
    return rng.sample(pool, k=min(len(pool), rng.choice(counts))) if pool else []


# ---------------------------------------------------------------------------------------------
# Styles: how the facts are written into history / diagnosis / notes
# ---------------------------------------------------------------------------------------------

def _demo_short(f: Facts, rng: random.Random) -> str:
    s = "F" if f.sex == "female" else "M"
    word = "female" if f.sex == "female" else "male"
    return rng.choice((f"{f.age}{s}", f"{f.age} {s}", f"{f.age}yo {s}", f"{f.age} y/o {s}",
                       f"{f.age} yo {word}", f"{s}, {f.age}", f"pt {f.age}{s}", f"{f.age}y {s}"))


def _demo_long(f: Facts, rng: random.Random) -> str:
    if f.age < 18:
        noun = "girl" if f.sex == "female" else "boy"
    else:
        noun = rng.choice(("woman", "female") if f.sex == "female" else ("man", "male"))
    word = "female" if f.sex == "female" else "male"
    return rng.choice((f"{f.age}-year-old {noun}", f"{f.age} year old {noun}",
                       f"{f.age} yo {word}", f"{f.age}-year-old {word} patient"))


_ABBREVIATIONS = (
    (r"\bhistory of\b", ("h/o", "hx of", "hx")), (r"\bstatus post\b", ("s/p",)),
    (r"\brule out\b", ("r/o",)), (r"\bconcern for\b", ("c/f",)),
    (r"\bevaluation\b", ("eval",)), (r"\bevaluate\b", ("eval",)),
    (r"\bwithout\b", ("w/o",)), (r"\bwith\b", ("w/", "w")), (r"\bpatient\b", ("pt",)),
    (r"\bshortness of breath\b", ("SOB",)), (r"\bfollow-up\b", ("f/u",)),
    (r"\bsymptoms\b", ("sx",)), (r"\bleft\b", ("L",)), (r"\bright\b", ("R",)),
)
_EXPANSIONS = (
    (r"\br/o\b", "rule out"), (r"\bh/o\b", "history of"), (r"\bs/p\b", "status post"),
    (r"\bc/f\b", "concern for"), (r"\bf/u\b", "follow-up"), (r"\bw/o\b", "without"),
    (r"\bw/(?=\s)", "with"), (r"\bpt\b", "patient"), (r"\bsx\b", "symptoms"),
    (r"\bhx\b", "history"), (r"\bd/t\b", "due to"), (r"\bdx\b", "diagnosis"),
)


def _abbreviate(text: str, rng: random.Random) -> str:
    for pattern, short in _ABBREVIATIONS:
        if rng.random() < 0.7:
            text = re.sub(pattern, lambda _m, s=short: rng.choice(s), text, flags=re.I)
    return text


def _expand(text: str, rng: random.Random) -> str:
    for pattern, long in _EXPANSIONS:
        if rng.random() < 0.6:
            text = re.sub(pattern, long, text)
    return text


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


_CODE_FORMATS = ("{c} {t}", "{c} {t}", "{c} - {t}", "{t} ({c})", "{c}", "{t}", "{c}: {t}")
_VAGUE_PREFIX = re.compile(r"^(Unspecified|Other specified|Other) ", re.I)


def _codes(f: Facts, rng: random.Random, separator: str = "; ") -> str:
    """The ICD-10 codes as EHRs print them: code and text, code only, text only, ..."""
    form = rng.choice(_CODE_FORMATS)
    shorten = rng.random() < 0.3
    items = []
    for code, text in f.icd:
        if shorten:  # "Unspecified abdominal pain" -> "abdominal pain"; drop qualifiers
            text = _VAGUE_PREFIX.sub("", text).split(",")[0]
        items.append(form.format(c=code, t=text))
    return separator.join(items)


def _write_terse(f: Facts, rng: random.Random) -> dict[str, str]:
    head = f"{_demo_short(f, rng)} {f.indication}" if f.show_demographics else f.indication
    clauses = [head, *f.findings, *f.history, *f.extras]
    extra = f.evidence + f.denials
    notes = ""
    if extra and rng.random() < 0.5:
        notes = rng.choice((", ", "; ", ". ")).join(extra)
    else:
        clauses += extra
    diagnosis = rng.choice(("", "", _codes(f, rng), f.icd[0][1] if f.icd else ""))
    history = rng.choice((", ", ", ", "; ", " ")).join(clauses)
    return {"history": _abbreviate(history, rng), "diagnosis": diagnosis,
            "notes": _abbreviate(notes, rng)}


_TEMPLATE_HISTORY = ("History", "Clinical history", "Hx", "Relevant history", "Background",
                     "PMH", "Pertinent history", "Patient history")
_TEMPLATE_REASON = ("Diagnosis", "Reason for exam", "Indication", "Clinical question",
                    "Clinical indication", "Reason for study", "Question", "Symptoms", "Dx",
                    "Specific question to be answered", "Reason", "Indication for exam",
                    "Working diagnosis", "Presenting complaint")
_TEMPLATE_OTHER = ("Comments", "Additional info", "Safety", "Other", "Notes",
                   "Allergies/safety", "MRI screening", "Special instructions",
                   "Additional clinical information", "Contrast/safety", "Pertinent info")
_TEMPLATE_LABS = ("Labs", "Pertinent labs", "Results", "Bloods", "Meds/labs", "Lab values")


def _write_template(f: Facts, rng: random.Random) -> dict[str, str]:
    demo = _demo_long(f, rng) if rng.random() < 0.5 else _demo_short(f, rng)
    split_labs = bool(f.extras) and rng.random() < 0.4  # labs and meds get their own line
    past = ", ".join(f.history + ([] if split_labs else f.extras)) or rng.choice(
        ("none", "noncontributory", "see chart", "nil", "N/A", "unremarkable"))
    history = f"{demo}; {past}" if f.show_demographics else past
    reason = ", ".join([f.indication, *f.findings])
    extra = f.evidence + f.denials
    upper = rng.random() < 0.2
    head = (lambda text: text.upper()) if upper else (lambda text: text)
    order = [(head(rng.choice(_TEMPLATE_REASON)), reason),
             (head(rng.choice(_TEMPLATE_HISTORY)), history)]
    if rng.random() < 0.6:
        order.reverse()  # history first, as most order screens have it
    if split_labs:
        order.append((head(rng.choice(_TEMPLATE_LABS)), ", ".join(f.extras)))
    if extra:
        order.append((head(rng.choice(_TEMPLATE_OTHER)), "; ".join(extra)))
    colon = rng.choice((": ", ": ", " - ", ":"))
    parts = [f"{label}{colon}{text}" for label, text in order]
    if rng.random() < 0.5:  # one free-text reason field holding the whole template
        joiner = rng.choice(("; ", "; ", " | ", "\n", ". "))
        return {"history": joiner.join(parts), "diagnosis": _codes(f, rng)
                if rng.random() < 0.3 else "", "notes": ""}
    return {"history": parts[0], "diagnosis": parts[1], "notes": "; ".join(parts[2:])}


_NOT_A_CONDITION = re.compile(r"^(h/o|hx|family|prior|s/p|on |recent|active|long-haul|"
                              r"immobilized|OCP|noise|neck radiation|contralateral|diabetes \()")


def _past_clause(history: list[str]) -> str:
    """' with a history of HTN and DM2', or ' (h/o DVT, recent surgery)' when that reads badly."""
    if not history:
        return ""
    if any(_NOT_A_CONDITION.match(item) for item in history):
        return f" ({', '.join(history)})"
    return f" with a history of {' and '.join(history)}"


def _write_narrative(f: Facts, rng: random.Random) -> dict[str, str]:
    demo = _demo_long(f, rng)
    past = _past_clause(f.history)
    opener = rng.choice((
        f"{demo}{past} presenting with {f.indication}",
        f"Please evaluate this {demo}{past} for {f.indication}",
        f"{demo}{past} seen today for {f.indication}",
        f"This is a {demo}{past} referred for {f.indication}",
        f"Referring {demo}{past}: {f.indication}",
    ) if f.show_demographics else (
        f"Patient{past} presenting with {f.indication}",
        f"Please evaluate for {f.indication}",
        f"Referred for {f.indication}",
    ))
    sentences = [_sentence(opener)]
    if f.findings or f.extras:
        sentences.append(_sentence(rng.choice(("Notable: ", "", "Also ")) +
                                   ", ".join(f.findings + f.extras)))
    for fact in f.evidence:
        sentences.append(_sentence(rng.choice(("Of note, ", "Note: ", "Please note ", "")) +
                                   fact))
    for fact in f.denials:
        sentences.append(_sentence(fact))
    text = _expand(" ".join(sentences), rng)
    diagnosis = rng.choice(("", f.icd[0][1] if f.icd else "", _codes(f, rng)))
    if rng.random() < 0.3 and len(sentences) > 2:  # the safety facts go to the notes field
        cut = 2 if f.findings or f.extras else 1
        return {"history": _expand(" ".join(sentences[:cut]), rng), "diagnosis": diagnosis,
                "notes": _expand(" ".join(sentences[cut:]), rng)}
    return {"history": text, "diagnosis": diagnosis, "notes": ""}


def _write_coded(f: Facts, rng: random.Random) -> dict[str, str]:
    history = f"{_demo_short(f, rng)}, {f.indication}" if f.show_demographics else f.indication
    if f.findings and rng.random() < 0.3:
        history += ", " + f.findings[0]
    separator = rng.choice(("; ", ", ", " | ", "\n"))
    diagnosis = _codes(f, rng, separator)
    if rng.random() < 0.2:
        diagnosis = diagnosis.lower()
    return {"history": _abbreviate(history, rng), "diagnosis": diagnosis,
            "notes": "; ".join(f.evidence + f.denials)}


_KEYBOARD_SLIPS = ("swap", "drop", "double")


def _misspell(word: str, rng: random.Random) -> str:
    if len(word) < 5 or any(ch.isdigit() for ch in word):
        return word
    i = rng.randrange(1, len(word) - 2)
    slip = rng.choice(_KEYBOARD_SLIPS)
    if slip == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if slip == "drop":
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _write_typo(f: Facts, rng: random.Random) -> dict[str, str]:
    """Typos and run-ons: a terse or narrative order, unpunctuated, misspelled, one field."""
    base = _write_terse(f, rng) if rng.random() < 0.6 else _write_narrative(f, rng)
    text = " ".join(v for v in (base["history"], base["notes"]) if v)
    if rng.random() < 0.6:  # run-on: the clause punctuation goes
        text = re.sub(r"[.;,]\s+", lambda _m: rng.choice((" ", " and ", " ", "  ")), text)
    if rng.random() < 0.5:
        text = text.lower()
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        j = rng.randrange(len(words))
        words[j] = _misspell(words[j], rng)
    return {"history": " ".join(words), "diagnosis": base["diagnosis"] if rng.random() < 0.3
            else "", "notes": ""}


_WRITERS = {"terse": _write_terse, "template": _write_template, "narrative": _write_narrative,
            "coded": _write_coded, "typo": _write_typo}
_STYLE_WEIGHTS = (0.26, 0.2, 0.2, 0.16, 0.18)


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


def _neighbours(catalog: Catalog) -> dict[str, list[Protocol]]:
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


def _ordered_exam(route: Route, target: Protocol, rng: random.Random,
                  neighbours: dict[str, list[Protocol]]) -> str:
    exam = _exam_text(route, target, rng, neighbours)
    if exam and rng.random() < _P_EXAM_UPPER:
        exam = exam.upper()
    return exam


def _exam_text(route: Route, target: Protocol, rng: random.Random,
               neighbours: dict[str, list[Protocol]]) -> str:
    known = KNOWLEDGE.get(target.name)
    r = rng.random()
    if r < _EXAM_PRECISE + _EXAM_VAGUE and neighbours[target.name] and (
            rng.random() < _P_EXAM_MISLEADING):
        other = rng.choice(neighbours[target.name])  # the referrer named another study
        other_known = KNOWLEDGE.get(other.name)
        pool = (_precise_exams(other, other_known) if rng.random() < 0.5
                else list(_vague_exams(other, other_known)))
        return fill(rng.choice(pool), rng)
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
    neighbours = _neighbours(catalog)
    rows = []
    for index in range(size):
        target = catalog.get(labels[index % len(labels)])
        assert target is not None
        routes = plan[target.name]
        route = rng.choices(routes, weights=[r.weight for r in routes])[0]
        facts = _draw_facts(route, target, rng)
        style = rng.choices(STYLES, weights=_STYLE_WEIGHTS)[0]
        if style == "coded" and not facts.icd:
            style = "terse"  # a site protocol without ICD-10 knowledge
        fields = _roughen(_WRITERS[style](facts, rng), style, rng)
        rows.append({
            "id": f"syn-{seed}-{index:06d}",
            "ordered_exam": _ordered_exam(route, target, rng, neighbours),
            "history": _tidy(fields["history"]),
            "diagnosis": _tidy(fields["diagnosis"]),
            "notes": _tidy(fields["notes"]),
            "label": target.name,
            "style": style,
            "modifiers": facts.modifiers,
            "source": route.source.name,
        })
    return rows


def _roughen(fields: dict[str, str], style: str, rng: random.Random) -> dict[str, str]:
    """The same facts written as real orders vary: labs with (SI) units, synonyms and lay
    terms, British spelling, real misspellings and lower case in messy orders."""
    units = rng.random() < _P_UNITS
    si = rng.random() < _P_SI_UNITS
    british = rng.random() < _P_BRITISH
    lower = style == "typo" or rng.random() < _P_LOWER
    out = {}
    for name, text in fields.items():
        if units:
            text = with_units(text, rng, si)
        if name != "diagnosis" or style != "coded":  # ICD-10 descriptions stay verbatim
            text = vary(text, rng, _SYNONYM_RATE)
        if british:
            text = britishize(text)
        if style == "typo":
            text = misspell_common(text, rng, 0.5)
            if lower and rng.random() < 0.5:
                text = text.lower()
        elif lower and style == "terse":
            text = text.lower()
        out[name] = text
    return out


def _tidy(text: str) -> str:
    return re.sub(r"[ \t]{2,}", " ", text).strip()


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


# ---------------------------------------------------------------------------------------------
# Writing the corpus and its report
# ---------------------------------------------------------------------------------------------

@dataclass
class CorpusReport:
    out_dir: Path
    seed: int
    requested: int
    generated: int
    duplicates: int
    conflicts: int
    splits: dict[str, int]
    per_protocol: dict[str, Counter] = field(default_factory=dict)  # protocol -> split counts
    per_style: Counter = field(default_factory=Counter)
    per_modifier: Counter = field(default_factory=Counter)
    redirected: int = 0  # examples whose label a modifier decided
    fallback_protocols: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # TF-IDF + logistic regression trained on the train split: {"test": ..., "dev": ...}
    # as `metrics.score_baseline` returns them; empty when not run.
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    dev_set: str = ""

    def summary(self) -> str:
        total = sum(self.splits.values())
        smallest = min(self.per_protocol.items(), key=lambda kv: sum(kv[1].values()),
                       default=("-", Counter()))
        text = (
            f"Wrote {total} examples to {self.out_dir} (train {self.splits['train']}, "
            f"validation {self.splits['validation']}, test {self.splits['test']}) for "
            f"{len(self.per_protocol)} protocols in {self.seconds:.1f} s (seed {self.seed}); "
            f"{self.duplicates} duplicates dropped; {self.redirected} labels decided by a "
            f"modifier; fewest examples: {smallest[0]} ({sum(smallest[1].values())})."
        )
        if self.fallback_protocols:
            text += (f" {len(self.fallback_protocols)} protocols written from catalog "
                     f"indications only.")
        if self.baseline:
            scores = "; ".join(
                f"{name} top-1 {_pct(m['top1'])}, top-3 {_pct(m['top3'])} (n={m['n']})"
                for name, m in self.baseline.items())
            text += f" TF-IDF baseline trained on train: {scores}."
        return text + f" Report: {self.out_dir / 'report.md'}"

    def to_markdown(self) -> str:
        """The report file; no timings in it, so the same seed gives the same bytes."""
        lines = [
            "# Synthetic corpus report", "",
            f"- seed: {self.seed}", f"- requested: {self.requested}",
            f"- generated: {self.generated}",
            f"- duplicates dropped (normalized text): {self.duplicates}",
            f"- duplicates with a different label: {self.conflicts}",
            f"- labels decided by a modifier: {self.redirected}",
            f"- protocols from catalog indications only: "
            f"{', '.join(self.fallback_protocols) or 'none'}", "",
            "## Splits", "", "| split | examples |", "|---|---:|",
            *(f"| {name} | {count} |" for name, count in self.splits.items()), "",
            "## Per protocol", "", "| protocol | train | validation | test | total |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, counts in self.per_protocol.items():
            cells = " | ".join(str(counts[s]) for s in SPLITS)
            lines.append(f"| {name} | {cells} | {sum(counts.values())} |")
        lines += ["", "## Per style", "", "| style | examples |", "|---|---:|"]
        lines += [f"| {s} | {n} |" for s, n in sorted(self.per_style.items())]
        lines += ["", "## Per modifier", "",
                  "`no_X` is a denial of X (it must not change the protocol).", "",
                  "| modifier | examples |", "|---|---:|"]
        lines += [f"| {m} | {n} |" for m, n in sorted(self.per_modifier.items())]
        if self.baseline:
            lines += self._baseline_markdown()
        return "\n".join(lines) + "\n"

    def _baseline_markdown(self) -> list[str]:
        names = list(self.baseline)
        lines = [
            "", "## TF-IDF baseline", "",
            "TF-IDF (words 1-2 + characters 3-5) and logistic regression trained on the train "
            "split, scored on this corpus's test split and on the independently written "
            f"development orders ({self.dev_set or 'absent'}). A corpus whose own test figure "
            "is far above the development figure is easier than real orders.", "",
            "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
            "| orders | " + " | ".join(str(self.baseline[n]["n"]) for n in names) + " |",
            "| top-1 | " + " | ".join(_pct(self.baseline[n]["top1"]) for n in names) + " |",
            "| top-3 | " + " | ".join(_pct(self.baseline[n]["top3"]) for n in names) + " |",
        ]
        for name in names:
            for key, table in self.baseline[name].items():
                if not key.startswith("by_"):
                    continue
                lines += ["", f"### {name} by {key[3:]}", "",
                          f"| {key[3:]} | orders | top-1 | top-3 |", "|---|---:|---:|---:|"]
                lines += [f"| {value} | {m['n']} | {_pct(m['top1'])} | {_pct(m['top3'])} |"
                          for value, m in table.items()]
        return lines


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


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
