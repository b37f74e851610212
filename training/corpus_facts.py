"""The facts of one synthetic order, before they are written: the route an example for a
protocol is written from (its own indication, or another protocol's or scenario's indication
plus the modifiers that redirect it), and the drawn facts (demographics, indication, findings,
history, labs, medications, modifier evidence, denials that must not change the protocol)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from radproto.model.catalog import Catalog, Protocol
from radproto.training.clinical_knowledge import (
    KNOWLEDGE,
    MODIFIERS,
    REDIRECTS,
    fallback_knowledge,
    neutral_modifiers,
    source_knowledge,
)
from radproto.training.knowledge_base import Indication, ProtocolKnowledge, fill
from radproto.training.knowledge_variety import admin_item, noise_items

# How often things happen (per example).
_P_RELEVANT_DENIAL = 0.5  # a denial of a modifier that would matter for this protocol
_P_SECOND_DENIAL = 0.15
_P_STRAY_DENIAL = 0.15  # a denial unrelated to this protocol's decisions
_P_NEUTRAL_MODIFIER = 0.2  # a modifier present that does not matter here
_P_NOISE = 0.5  # comorbidities or routine medications that decide nothing
_P_ADMIN = 0.3  # ordering chatter ("STAT", "call results to ...")


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


def draw_facts(route: Route, target: Protocol, rng: random.Random) -> Facts:
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
    # nor the modifier evidence ("denies pregnancy" beside "urine hCG positive")
    said = " ".join(indication.phrases + tuple(text for _, text in indication.icd)
                    + tuple(evidence))
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
    pregnant = {"pregnancy", "early_pregnancy"} & set(present)
    return not (pregnant and _NOT_PREGNANT.search(item))


def _fits(modifier: Any, sex: str, age: int) -> bool:
    if modifier.sex != "any" and modifier.sex != sex:
        return False
    return not modifier.age or modifier.age[0] <= age <= modifier.age[1]


def _some(pool: tuple[str, ...], rng: random.Random, counts: tuple[int, ...]) -> list[str]:
    return rng.sample(pool, k=min(len(pool), rng.choice(counts))) if pool else []


