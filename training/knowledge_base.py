"""The shapes of the clinical knowledge tables, and the compact helpers that build them.

The tables are written as short strings to stay readable: alternatives are separated by
" | ", ICD-10 codes as "CODE text; CODE text". A template may hold "{lo-hi}" (a number drawn
in that range, with as many decimals as the bounds show) and "{side}" (left or right).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

Sex = str  # "any" | "female" | "male"


@dataclass(frozen=True)
class Indication:
    """One reason to order a protocol: synonymous phrasings, ICD-10 codes, typical findings."""

    phrases: tuple[str, ...]
    icd: tuple[tuple[str, str], ...] = ()
    findings: tuple[str, ...] = ()
    sex: Sex | None = None  # overrides the protocol's when the indication is sex-specific
    age: tuple[int, int] | None = None


@dataclass(frozen=True)
class ProtocolKnowledge:
    """What a referring clinician writes when ordering one protocol."""

    name: str
    indications: tuple[Indication, ...]
    history: tuple[str, ...] = ()  # past history and risk factors
    labs: tuple[str, ...] = ()
    meds: tuple[str, ...] = ()
    age: tuple[int, int] = (18, 90)
    sex: Sex = "any"
    vague_exams: tuple[str, ...] = ()  # what is ordered when the clinician is not specific
    precise_exams: tuple[str, ...] = ()  # ways of naming exactly this protocol
    negations: tuple[str, ...] = ()  # modifier keys whose denial is routinely written here


@dataclass(frozen=True)
class Modifier:
    """A fact that changes (or, denied, must not change) the protocol."""

    key: str
    evidence: tuple[str, ...]
    negations: tuple[str, ...] = ()
    icd: tuple[tuple[str, str], ...] = ()
    sex: Sex = "any"
    age: tuple[int, int] | None = None
    contradicted_by: str = ""  # regex: an indication matching it must not carry the denial


@dataclass(frozen=True)
class Redirect:
    """Source indication + modifiers -> the first target the catalog has (else not generated)."""

    source: str
    modifiers: tuple[str, ...]
    targets: tuple[str, ...]
    indications: tuple[int, ...] = ()  # which of the source's indications apply (all if empty)
    weight: float = 1.0  # share among the routes to the target protocol


def alts(text: str) -> tuple[str, ...]:
    """'a | b | c' -> ('a', 'b', 'c')."""
    return tuple(part.strip() for part in text.split(" | ") if part.strip())


def codes(text: str) -> tuple[tuple[str, str], ...]:
    """'R06.02 Shortness of breath; R07.81 Pleurodynia' -> (('R06.02', '...'), ...)."""
    pairs = []
    for item in text.split(";"):
        item = item.strip()
        if item:
            code, _, description = item.partition(" ")
            pairs.append((code, description.strip()))
    return tuple(pairs)


def ind(phrases: str, icd: str = "", findings: str = "", *, sex: Sex | None = None,
        age: tuple[int, int] | None = None) -> Indication:
    return Indication(alts(phrases), codes(icd), alts(findings), sex, age)


def protocol(name: str, indications: list[Indication], *, history: str = "", labs: str = "",
             meds: str = "", age: tuple[int, int] = (18, 90), sex: Sex = "any",
             vague: str = "", precise: str = "", negations: str = "") -> ProtocolKnowledge:
    return ProtocolKnowledge(
        name=name, indications=tuple(indications), history=alts(history), labs=alts(labs),
        meds=alts(meds), age=age, sex=sex, vague_exams=alts(vague), precise_exams=alts(precise),
        negations=tuple(negations.split()),
    )


_SLOT = re.compile(r"\{(side|\d+(?:\.\d+)?-\d+(?:\.\d+)?)\}")


def fill(template: str, rng: random.Random) -> str:
    """A template with its {lo-hi} and {side} slots filled."""
    if "{" not in template:
        return template

    def one(match: re.Match[str]) -> str:
        slot = match.group(1)
        if slot == "side":
            return rng.choice(("left", "right", "L", "R"))
        lo_text, hi_text = slot.split("-")
        decimals = len(lo_text.partition(".")[2])
        lo, hi = float(lo_text), float(hi_text)
        if decimals == 0:
            return str(rng.randint(int(lo), int(hi)))
        return f"{rng.uniform(lo, hi):.{decimals}f}"

    return _SLOT.sub(one, template)
