"""The clinical knowledge the synthetic corpus is written from.

* `KNOWLEDGE`: per protocol, what referring clinicians write (knowledge_neuro/_body/_other).
* `SCENARIOS`: presentations with no protocol of their own (stroke, hematuria): the
  modifiers decide which protocol they get.
* `MODIFIERS`: facts that change the protocol, with the ways they are written and denied.
* `REDIRECTS`: which (source, modifiers) goes to which protocol. A redirect whose target the
  catalog lacks is not generated (e.g. no "CT Abdomen Pelvis WO Contrast" in the default).
* `neutral_modifiers(protocol)`: modifiers that are present but must NOT change a protocol
  (a contrast allergy before a non-contrast study, a pacemaker before a CT).
* `fallback_knowledge(protocol)`: knowledge for a site protocol the tables do not know,
  built from its catalog name and indications.
"""

from __future__ import annotations

from dataclasses import replace

from radproto.model.catalog import Protocol
from radproto.training.knowledge_base import (
    Indication,
    Modifier,
    ProtocolKnowledge,
    Redirect,
    alts,
    codes,
    protocol,
)
from radproto.training.knowledge_body import BODY, HEMATURIA
from radproto.training.knowledge_extra import EXTRA, MODIFIER_TEXT, TRAUMA_WORDS, extend
from radproto.training.knowledge_followup import FOLLOWUP
from radproto.training.knowledge_modifiers import (
    MORE_MODIFIER_TEXT,
    MORE_NEGATIONS,
    MORE_REDIRECTS,
    NEW_MODIFIERS,
)
from radproto.training.knowledge_neuro import NEURO, STROKE
from radproto.training.knowledge_other import OTHER


def _more_negations(k: ProtocolKnowledge) -> ProtocolKnowledge:
    more = [key for key in MORE_NEGATIONS.get(k.name, "").split() if key not in k.negations]
    return replace(k, negations=k.negations + tuple(more)) if more else k


KNOWLEDGE: dict[str, ProtocolKnowledge] = {
    k.name: _more_negations(extend(extend(k, EXTRA.get(k.name)), FOLLOWUP.get(k.name)))
    for k in (*NEURO, *BODY, *OTHER)}
SCENARIOS: dict[str, ProtocolKnowledge] = {
    k.name: _more_negations(k) for k in (STROKE, HEMATURIA)}


def _modifier(key: str, evidence: str, negations: str = "", icd: str = "", *,
              sex: str = "any", age: tuple[int, int] | None = None,
              contradicted_by: str = "") -> Modifier:
    return Modifier(key, alts(evidence), alts(negations), codes(icd), sex, age, contradicted_by)


MODIFIERS: dict[str, Modifier] = {m.key: m for m in (
    _modifier(
        "contrast_allergy",
        "severe iodinated contrast allergy (anaphylaxis) | h/o anaphylaxis to IV contrast | "
        "Allergies: iodinated contrast - anaphylaxis | prior anaphylactic reaction to CT "
        "contrast | severe contrast allergy (laryngeal edema) | contrast allergy: anaphylaxis "
        "requiring epi | anaphylaxis to iodinated contrast in {2008-2023} | severe reaction to "
        "IV dye (throat closing, hypotension)",
        "no contrast allergy | NKDA | no known drug allergies | no prior contrast reaction | "
        "Allergies: PCN (rash) | allergies: sulfa | tolerated IV contrast previously | "
        "no allergy to iodinated contrast | shellfish allergy only, no contrast allergy | "
        "denies contrast allergy | mild hives to contrast in past, premedicate per protocol"),
    _modifier(
        "renal_failure",
        "eGFR {12-28} | ESRD on HD | on hemodialysis MWF | CKD stage 4, eGFR {15-29} | "
        "Cr {3.1-6.5}, eGFR {8-25} | dialysis dependent | ESRD on peritoneal dialysis | "
        "AKI with eGFR {10-27}",
        "eGFR {61-110} | Cr {0.6-1.1} | normal renal function | eGFR >60 | "
        "Cr {0.7-1.2}, eGFR {65-105} | no CKD | renal function normal (eGFR {70-99})",
        "N18.6 End stage renal disease; Z99.2 Dependence on renal dialysis",
        contradicted_by=r"CKD|kidney injury|\bAKI\b|creatinine|renal disease|renal size"),
    _modifier(
        "pregnancy",
        "pregnant, {8-36} wks | G2P1 at {10-34} weeks gestation | IUP at {12-35} wks | "
        "currently pregnant ({10-36} wk) | {14-34} weeks pregnant | pregnant, 2nd trimester",
        "not pregnant | urine hCG negative | hCG neg | serum hCG negative | "
        "pregnancy test negative",
        "Z33.1 Pregnant state, incidental", sex="female", age=(18, 42),
        contradicted_by=r"pregnan|hCG|ectopic|gestation|\bIUP\b|dating|abortion|\bUPT\b|"
        r"\bLMP\b"),
    _modifier(
        "normal_cxr",
        "CXR normal | CXR clear | normal chest radiograph | CXR today unremarkable"),
    _modifier(
        "abnormal_cxr",
        "CXR with RLL opacity | CXR: new L effusion | abnormal CXR (consolidation) | "
        "CXR shows bibasilar opacities"),
    _modifier(
        "pacemaker",
        "non-MRI-conditional pacemaker | legacy pacemaker, not MR conditional | MRI-unsafe "
        "pacemaker | PPM (not MRI compatible) | AICD, not MR conditional | old pacemaker, MRI "
        "unsafe per cardiology | abandoned pacer leads, MRI contraindicated",
        "no pacemaker | no implanted devices | no metal implants | MRI-conditional pacemaker, "
        "cleared by EP | MRI screening negative | no pacemaker or defibrillator"),
    _modifier(
        "claustrophobia",
        "severe claustrophobia, unable to tolerate MRI | failed prior MRI due to claustrophobia "
        "| pt refuses MRI (severe claustrophobia) | severe claustrophobia despite sedation | "
        "could not complete MRI d/t claustrophobia, even with anxiolytics",
        "no claustrophobia | mild claustrophobia, will premedicate with lorazepam | tolerated "
        "prior MRI | not claustrophobic",
        "F40.240 Claustrophobia"),
    _modifier(
        "prior_spine_surgery",
        "s/p L4-5 laminectomy {2010-2023}, recurrent pain | h/o L5-S1 microdiscectomy | "
        "s/p L4-S1 fusion | prior lumbar decompression, recurrent pain | failed back surgery "
        "syndrome | s/p L4-5 discectomy, now recurrent radicular pain | post-laminectomy, "
        "new recurrent sx",
        "no prior back surgery | no h/o spine surgery | no spinal surgery | surgical hx: "
        "appendectomy only | never had back surgery",
        "M96.1 Postlaminectomy syndrome, not elsewhere classified",
        contradicted_by=r"laminectomy|discectomy|fusion|back surgery"),
    _modifier(
        "stroke_acute",
        "onset {1-3} h ago | LKW {30-55} min ago | sx onset {1-4} hrs ago | last known well "
        "{1-4}h ago | symptom onset {40-150} min prior | code stroke, onset {1-3}h"),
    _modifier(
        "stroke_extended",
        "wake-up stroke | woke up with sx, LKW {7-10} hrs ago | LKW {7-22}h ago | sx onset "
        "{8-20} hrs ago, eval for thrombectomy | last known well last night, found this AM | "
        "onset {7-23}h ago, outside tPA window"),
    _modifier(
        "stroke_remote",
        "sx started {3-10} days ago | symptoms x {4-14} days, improving | subacute sx for "
        "{1-3} wks | weakness began {3-7} days ago | episode {2-6} wks ago, residual deficit"),
    _modifier(
        "hematuria_painless",
        "painless | no flank pain | without pain | no pain or dysuria | painless, intermittent"),
    _modifier(
        "hematuria_painful",
        "with {side} flank pain | with colicky {side} flank pain radiating to groin | "
        "+ severe flank pain | and renal colic | with acute {side} flank pain"),
    _modifier(
        "trauma", "",
        "denies trauma | no trauma | no injury | no recent fall | atraumatic | no known trauma",
        contradicted_by=r"trauma|injur|fall|fell|MVC|assault|fractur|\bfx\b|struck|\bhit\b|"
        r"punch|GSW|stab|dislocat|sprain|tear|twist|blowout|diving|height|ladder|seatbelt|"
        r"laceration|biopsy|hemotympanum|instabilit|giving way|athlete|" + TRAUMA_WORDS),
    _modifier(
        "weight_limit",
        "weight {205-260} kg, exceeds MRI table limit | BMI {60-75}, will not fit MRI bore | "
        "body habitus precludes MRI ({200-250} kg) | too large for MRI scanner | "
        "wt {210-260} kg - over MRI weight limit | bariatric pt, exceeds MR table",
        "weight {55-110} kg | BMI {21-33} | fits scanner",
        "E66.01 Morbid (severe) obesity due to excess calories; Z68.45 Body mass index "
        "[BMI] 70 or greater, adult"),
)}

MODIFIERS = {key: replace(m, evidence=m.evidence + alts(MODIFIER_TEXT[key][0]),
                          negations=m.negations + alts(MODIFIER_TEXT[key][1]))
             if key in MODIFIER_TEXT else m for key, m in MODIFIERS.items()}
MODIFIERS = {key: replace(m, evidence=m.evidence + alts(MORE_MODIFIER_TEXT[key][0]),
                          negations=m.negations + alts(MORE_MODIFIER_TEXT[key][1]))
             if key in MORE_MODIFIER_TEXT else m for key, m in MODIFIERS.items()}
MODIFIERS.update({key: _modifier(key, evidence, negations, sex=sex, age=age,
                                 contradicted_by=contradicted)
                  for key, (evidence, negations, sex, age, contradicted)
                  in NEW_MODIFIERS.items()})

_MRI_BRAIN_TO_CT = (0, 1, 3, 4)  # tumor, metastases, seizure, infection (not MS: CT is useless)
_NO_MRI = ("pacemaker", "claustrophobia", "weight_limit")

REDIRECTS: tuple[Redirect, ...] = (
    Redirect("CTA Chest Pulmonary Embolism", ("contrast_allergy",),
             ("NM Lung Ventilation Perfusion",)),
    Redirect("CTA Chest Pulmonary Embolism", ("renal_failure",),
             ("NM Lung Ventilation Perfusion",)),
    Redirect("CTA Chest Pulmonary Embolism", ("pregnancy", "normal_cxr"),
             ("NM Lung Ventilation Perfusion",)),
    # pregnant with an abnormal chest film: V/Q would be nondiagnostic, so CTPA stays
    Redirect("CTA Chest Pulmonary Embolism", ("pregnancy", "abnormal_cxr"),
             ("CTA Chest Pulmonary Embolism",), weight=0.8),
    Redirect("CT Chest W Contrast", ("contrast_allergy",), ("CT Chest WO Contrast",)),
    Redirect("CT Chest W Contrast", ("renal_failure",), ("CT Chest WO Contrast",)),
    Redirect("CT Abdomen Pelvis W Contrast", ("contrast_allergy",),
             ("CT Abdomen Pelvis WO Contrast",), indications=(0, 1, 2, 3, 4, 5)),
    Redirect("CT Abdomen Pelvis W Contrast", ("renal_failure",),
             ("CT Abdomen Pelvis WO Contrast",), indications=(0, 1, 2, 3, 4, 5)),
    Redirect("CT Liver Multiphase", ("contrast_allergy",), ("MRI Abdomen W and WO Contrast",)),
    Redirect("MRI Brain W and WO Contrast", ("pacemaker",), ("CT Head W and WO Contrast",),
             indications=_MRI_BRAIN_TO_CT),
    Redirect("MRI Brain W and WO Contrast", ("claustrophobia",), ("CT Head W and WO Contrast",),
             indications=_MRI_BRAIN_TO_CT),
    Redirect("MRI Lumbar Spine WO Contrast", ("prior_spine_surgery",),
             ("MRI Lumbar Spine W and WO Contrast",), indications=(0, 1, 3), weight=1.5),
    Redirect("MRI Lumbar Spine WO Contrast", ("pacemaker",), ("CT Lumbar Spine WO Contrast",),
             indications=(0, 1, 2, 3)),
    Redirect("MRI Lumbar Spine WO Contrast", ("claustrophobia",),
             ("CT Lumbar Spine WO Contrast",), indications=(0, 1, 2, 3)),
    Redirect("MRI Lumbar Spine WO Contrast", ("weight_limit",),
             ("CT Lumbar Spine WO Contrast",), indications=(0, 1, 2, 3), weight=0.6),
    Redirect("MRI Brain W and WO Contrast", ("weight_limit",), ("CT Head W and WO Contrast",),
             indications=_MRI_BRAIN_TO_CT, weight=0.6),
    Redirect("scenario:stroke", ("stroke_acute",), ("CTA Head and Neck",)),
    Redirect("scenario:stroke", ("stroke_extended",), ("CT Brain Perfusion",)),
    Redirect("scenario:stroke", ("stroke_remote",), ("MRI Brain WO Contrast",)),
    Redirect("scenario:hematuria", ("hematuria_painless",), ("CT Urography",), weight=1.5),
    Redirect("scenario:hematuria", ("hematuria_painful",), ("CT Renal Stone Protocol",)),
    # ACR: hematuria with renal insufficiency or in pregnancy -> ultrasound
    Redirect("scenario:hematuria", ("hematuria_painless", "renal_failure"), ("US Renal",)),
    Redirect("scenario:hematuria", ("hematuria_painless", "pregnancy"), ("US Renal",)),
    Redirect("CT Renal Stone Protocol", ("pregnancy",), ("US Renal",)),
    *(Redirect(source, modifiers, targets, indications, weight)
      for source, modifiers, targets, indications, weight in MORE_REDIRECTS),
)


def source_knowledge(name: str) -> ProtocolKnowledge | None:
    """The knowledge for a protocol or scenario name."""
    return KNOWLEDGE.get(name) or SCENARIOS.get(name)


def redirect_sources(name: str) -> set[str]:
    """The modifier keys that redirect away from protocol `name` (its own decision points)."""
    return {key for r in REDIRECTS if r.source == name for key in r.modifiers}


def neutral_modifiers(target: Protocol) -> tuple[str, ...]:
    """Modifiers that may be present on an order for `target` without changing it."""
    changing = redirect_sources(target.name)
    modality, contrast = target.modality, target.contrast
    neutral = []
    if contrast not in ("with", "with and without") or modality != "CT":
        neutral.append("contrast_allergy")  # iodinated contrast only matters for contrast CT
    if modality in ("US", "XR", "NM") or (modality == "CT" and contrast == "none"):
        neutral.append("renal_failure")  # (gadolinium at eGFR < 30 is a judgement call: skip)
    if modality != "MR":
        neutral += ["pacemaker", "claustrophobia", "weight_limit"]
    if modality == "US" and "pelvis" not in target.body_region and target.name != "US Scrotum":
        neutral.append("pregnancy")  # ultrasound is the pregnancy-safe choice anyway
    if "spine" not in target.body_region:
        neutral.append("prior_spine_surgery")
    return tuple(key for key in neutral if key not in changing)


_MODALITY_WORDS = {
    "CT": ("CT",), "MR": ("MRI", "MR"), "US": ("US", "ultrasound"), "NM": ("NM", "nuclear"),
    "PET": ("PET", "PET/CT"), "XR": ("XR", "x-ray"), "MG": ("mammo", "mammogram"),
    "RF": ("fluoro",), "IR": ("IR",), "DXA": ("DEXA", "bone density"),
}


def fallback_knowledge(target: Protocol) -> ProtocolKnowledge:
    """Knowledge for a protocol the tables lack: its catalog indications and name."""
    words = _MODALITY_WORDS.get(target.modality, (target.modality,))
    region = target.body_region.replace("/", " and ") or " ".join(
        w for w in target.name.lower().split() if w not in {x.lower() for x in words}
        and w != target.modality.lower()) or "body"
    indications = [
        Indication(phrases=(text, f"eval {text}", f"{text}, please evaluate", f"r/o {text}"))
        for text in target.indications
    ] or [Indication(phrases=(f"{region} evaluation", f"eval {region}",
                              f"{region} imaging per {target.name}"))]
    vague = " | ".join(f"{word} {region}" for word in words) + " | imaging"
    return protocol(target.name, indications, vague=vague)


def modality_words(modality: str) -> tuple[str, ...]:
    return _MODALITY_WORDS.get(modality, (modality,))
