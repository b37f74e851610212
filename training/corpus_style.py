"""How the facts of one order are written: five styles (terse, template, narrative, coded,
typo) into the order-file fields, then roughened the way real orders vary (labs with units,
synonyms and lay terms, British spelling, misspellings, lower case)."""

from __future__ import annotations

import random
import re

from radproto.training.corpus_facts import Facts
from radproto.training.knowledge_variety import britishize, misspell_common, vary, with_units

STYLES: tuple[str, ...] = ("terse", "template", "narrative", "coded", "typo")
_P_UNITS, _P_SI_UNITS = 0.45, 0.3  # labs written with units; of those, SI units
_SYNONYM_RATE = 0.35  # chance that each synonym pattern found is rewritten
_P_BRITISH = 0.1
_P_LOWER = 0.15  # a non-messy order typed in lower case


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


WRITERS = {"terse": _write_terse, "template": _write_template, "narrative": _write_narrative,
            "coded": _write_coded, "typo": _write_typo}
STYLE_WEIGHTS = (0.26, 0.2, 0.2, 0.16, 0.18)




def roughen(fields: dict[str, str], style: str, rng: random.Random) -> dict[str, str]:
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


def tidy(text: str) -> str:
    return re.sub(r"[ \t]{2,}", " ", text).strip()
