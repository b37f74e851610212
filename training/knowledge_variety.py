"""How the same facts are written differently: synonyms, lay terms, British spelling, lab
units, common misspellings, and the clinical and administrative noise real orders carry.

None of this decides a protocol. It is applied by `corpus.py` after the facts are drawn, so
that a classifier trained on the corpus cannot rely on one phrasing per indication, and learns
that comorbidities, routine medications and ordering chatter do not change the answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from radproto.training.knowledge_base import alts, fill

# ---------------------------------------------------------------------------------------------
# Synonyms: (pattern, alternatives). Each pattern is rewritten with some probability, so one
# indication is written in many ways; the alternatives are what referrers actually type.
# ---------------------------------------------------------------------------------------------

_SYNONYM_TABLE = (
    (r"\bshortness of breath\b|\bSOB\b", "SOB | short of breath | dyspnea | dyspnoea | "
     "difficulty breathing | breathless | DIB | SOBOE | trouble breathing"),
    (r"\babd(?:ominal)? pain\b", "abd pain | abdo pain | belly pain | stomach pain | "
     "abdominal discomfort | abd pn | tummy pain"),
    (r"\bheadaches?\b", "headache | HA | h/a | cephalgia | head pain | HA's"),
    (r"\bchest pain\b", "CP | chest discomfort | chest pressure | c/p"),
    (r"\br/o\b|\brule out\b", "r/o | rule out | ? | eval for | assess for | query | exclude | "
     "ro | R/O | evaluate for | please exclude"),
    (r"\bc/f\b|\bconcern for\b", "c/f | concern for | suspect | suspected | possible | ? | "
     "worried about | likely | ?? | cf | concerning for | poss"),
    (r"\bsuspected\b", "suspected | ? | possible | presumed | clinically suspected | query"),
    (r"\bfracture\b", "fracture | fx | #"),
    (r"\bfollow-up\b|\bf/u\b", "f/u | follow-up | follow up | FU | interval eval | recheck"),
    (r"\bright lower quadrant\b|\bRLQ\b", "RLQ | right lower quadrant | R lower abd | "
     "right iliac fossa | RIF"),
    (r"\bright upper quadrant\b|\bRUQ\b", "RUQ | right upper quadrant | R upper abd | "
     "right hypochondrium"),
    (r"\bleft lower quadrant\b|\bLLQ\b", "LLQ | left lower quadrant | left iliac fossa | LIF"),
    (r"\bpulmonary embol(?:ism|us)\b", "pulmonary embolism | PE | pulmonary embolus | "
     "pulmonary emboli | clot in the lung | PTE"),
    (r"\bdeep vein thrombosis\b|\bDVT\b", "DVT | deep vein thrombosis | deep venous thrombosis "
     "| blood clot in leg | clot"),
    (r"\bnausea and vomiting\b|\bvomiting\b", "N/V | n+v | vomiting | emesis | throwing up"),
    (r"\blow back pain\b|\bLBP\b", "LBP | low back pain | lower back pain | lumbago | "
     "lumbar pain | back pain"),
    (r"\bgross hematuria\b|\bvisible hematuria\b", "gross hematuria | frank hematuria | "
     "visible haematuria | blood in urine | red urine | macroscopic haematuria"),
    (r"\bjaundice\b", "jaundice | icterus | yellow skin | jaundiced"),
    (r"\bweight loss\b|\bwt loss\b", "weight loss | wt loss | losing weight | unintentional "
     "wt loss | unexplained weight loss"),
    (r"\bbilateral\b", "bilateral | b/l | bilat | both"),
    (r"\btenderness\b", "tenderness | TTP | tender"),
    (r"\bx-ray\b|\bCXR\b", "CXR | chest x-ray | chest xray | CXR | plain film | chest film"),
    (r"\bcancer\b", "cancer | ca | CA | malignancy | carcinoma | ca."),
    (r"\bmetastases\b|\bmets\b", "mets | metastases | metastatic disease | secondaries | "
     "metastatic spread"),
    (r"\bpneumonia\b|\bPNA\b", "pneumonia | PNA | CAP | chest infection | pneumonitis"),
    (r"\bseizure\b", "seizure | sz | fit | convulsion | seizure-like episode"),
    (r"\bconfusion\b", "confusion | confused | disoriented | delirium | not making sense"),
    (r"\bweakness\b", "weakness | weak | paresis | loss of strength"),
    (r"\bnumbness\b", "numbness | paresthesias | tingling | pins and needles"),
    (r"\bswelling\b", "swelling | edema | oedema | swollen | puffiness"),
    (r"\bfever\b", "fever | febrile | pyrexia | temps | spiking temps | pyrexial"),
    (r"\bkidney stone\b", "kidney stone | renal calculus | nephrolithiasis | renal stone | "
     "stone"),
    (r"\bgallstones\b|\bcholelithiasis\b", "gallstones | cholelithiasis | GS | stones in GB"),
    (r"\bgallbladder\b", "gallbladder | GB | gall bladder"),
    (r"\bhypertension\b|\bHTN\b", "HTN | hypertension | high BP | HBP"),
    (r"\bDM2\b|\btype 2 diabetes\b", "DM2 | T2DM | type 2 diabetes | NIDDM | DM | diabetes"),
    (r"\bhistory of\b|\bh/o\b", "h/o | hx of | history of | PMH | known | PH of"),
    (r"\bstatus post\b|\bs/p\b", "s/p | status post | post | after | following"),
    (r"\bpatient\b|\bpt\b", "pt | patient | pt. | the patient"),
    (r"\bweeks\b|\bwks\b", "weeks | wks | wk | /52"),
    (r"\bdays\b", "days | d | /7"),
    (r"\bmonths\b", "months | mo | mos | /12"),
    (r"\bevaluation\b|\beval\b", "eval | evaluation | assessment | w/u | workup"),
    (r"\bmass\b", "mass | lesion | lump | growth"),
    (r"\blymphadenopathy\b", "lymphadenopathy | LAD | enlarged nodes | swollen glands"),
    (r"\bmyocardial infarction\b|\bMI\b", "MI | heart attack | myocardial infarction"),
    (r"\bTIA\b", "TIA | mini-stroke | transient ischemic attack | transient ischaemic attack"),
    (r"\bCVA\b|\bstroke\b", "CVA | stroke | infarct | brain attack"),
    (r"\bhemorrhage\b|\bbleed\b", "bleed | hemorrhage | haemorrhage | bleeding"),
    (r"\bemergency department\b|\bED\b", "ED | ER | emergency dept | A&E | ED"),
    (r"\bultrasound\b", "ultrasound | US | sono | USS | u/s"),
    (r"\bdyspnea on exertion\b|\bDOE\b", "DOE | dyspnea on exertion | SOBOE | "
     "breathless on exertion"),
    (r"\bradiating\b", "radiating | radiates | going | shooting"),
    (r"\bwith\b", "with | w/ | w | +"),
    (r"\bwithout\b", "without | w/o | no"),
)

SYNONYMS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern, re.I), alts(choices)) for pattern, choices in _SYNONYM_TABLE)

# British spelling (UK and Commonwealth referrers).
_BRITISH = (
    (r"hemat", "haemat"), (r"hemor", "haemor"), (r"hemo(?=[a-z])", "haemo"), (r"anemi", "anaemi"),
    (r"edema", "oedema"), (r"tumor", "tumour"), (r"esophag", "oesophag"), (r"ischem", "ischaem"),
    (r"pediatric", "paediatric"), (r"fetal", "foetal"), (r"gynecolog", "gynaecolog"),
    (r"orthoped", "orthopaed"), (r"leukemi", "leukaemi"), (r"estrogen", "oestrogen"),
    (r"diarrhea", "diarrhoea"), (r"dyspnea", "dyspnoea"), (r"color", "colour"),
    (r"center", "centre"), (r"behavior", "behaviour"), (r"ization", "isation"),
    (r"apnea", "apnoea"), (r"cesarean", "caesarean"), (r"\bflank\b", "loin"),
)
BRITISH: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement) for pattern, replacement in _BRITISH)

# Misspellings seen in real order text (not random keyboard slips).
MISSPELLINGS: dict[str, tuple[str, ...]] = {
    "abdominal": ("abdominol", "abdomnal", "abdominial"), "pneumonia": ("pnuemonia", "pneumona"),
    "diverticulitis": ("diverticulitus", "diverticulits"), "appendicitis": ("appendicitus",
                                                                            "apendicitis"),
    "cholecystitis": ("cholecystitus", "cholecistitis"), "hematuria": ("hemturia", "heamaturia"),
    "embolism": ("embolisim", "emobolism"), "pulmonary": ("pulmonry", "plumonary"),
    "radiculopathy": ("radiculopthy", "radiculapathy"), "sciatica": ("siatica", "sciatia"),
    "seizure": ("siezure", "seizsure"), "headache": ("headach", "haedache"),
    "fracture": ("fracure", "fratcure"), "thrombosis": ("thrombosys", "thrombisis"),
    "pancreatic": ("pancratic", "pancreatc"), "metastases": ("metastasis", "metastses"),
    "lymphoma": ("lymphona", "lymhoma"), "stenosis": ("stenoses", "stenois"),
    "aneurysm": ("aneurism", "anuerysm", "aneursym"), "dissection": ("disection",),
    "hydronephrosis": ("hydronephrsis", "hydronephosis"), "nodule": ("nodual", "nodle"),
    "swelling": ("sweling", "swellng"), "bleeding": ("bleding", "bleedng"),
    "weakness": ("weaknes", "weekness"), "tenderness": ("tenderess", "tendernes"),
    "shoulder": ("sholder", "shoudler"), "meniscus": ("menicus", "miniscus"),
    "testicular": ("testicualr", "testiclar"), "ovarian": ("ovarain", "ovarin"),
    "thyroid": ("thryoid", "thyriod"), "carotid": ("cartoid", "carotd"),
    "pregnant": ("pregant", "prengant"), "pregnancy": ("pregancy", "pregnacy"),
    "allergy": ("alergy", "allegy"), "contrast": ("contrst", "constrast"),
    "claustrophobia": ("claustraphobia", "clausterphobia", "claustrophobic"),
    "pacemaker": ("pacemaer", "pacmaker"), "dialysis": ("dialisis", "dyalysis"),
    "sinusitis": ("sinusitus", "sinusits"), "cirrhosis": ("cirrosis", "cirhosis"),
    "diarrhea": ("diarrea", "diarhea"), "jaundice": ("jaundace", "jaundise"),
    "cholangitis": ("cholangitus",), "hemorrhage": ("hemorrage", "hemmorhage", "hemorhage"),
    "myelopathy": ("myelopthy",), "osteomyelitis": ("osteomylitis", "osteomyelitus"),
    "dementia": ("dementa", "demntia"), "vertigo": ("vertgo",), "tinnitus": ("tinnitis",
                                                                             "tinitus"),
    "prostate": ("prostrate",), "rotator": ("rotater",), "ligament": ("ligamnet",),
}

# ---------------------------------------------------------------------------------------------
# Noise: comorbidities, routine medications and ordering chatter that decide nothing
# ---------------------------------------------------------------------------------------------

COMORBIDITIES = alts(
    "HTN | DM2 | HLD | hyperlipidemia | GERD | hypothyroidism | OSA on CPAP | depression | "
    "anxiety | osteoarthritis | obesity | gout | asthma | COPD | CAD s/p PCI | s/p CABG | "
    "afib on apixaban | former smoker | current smoker | remote smoker | social EtOH | "
    "s/p cholecystectomy | s/p appendectomy | s/p TKA | s/p hysterectomy | hypothyroid on "
    "levothyroxine | migraines | insomnia | glaucoma | BPH | chronic pain | fibromyalgia | "
    "iron deficiency anemia | vitamin D deficiency | psoriasis | RA | lupus | HIV well "
    "controlled | hep C treated | bipolar disorder | schizophrenia | PTSD | sickle cell trait | "
    "T1DM | prediabetes | morbid obesity | HFrEF | HFpEF | aortic stenosis | PVD | "
    "hx of MRSA | diverticulosis | IBS | hemorrhoids | cataracts | macular degeneration | "
    "Parkinson disease | prior DVT | osteoporosis | hearing loss | chronic back pain | "
    "peripheral neuropathy | s/p tonsillectomy | s/p C-section | s/p hernia repair | "
    "anemia | thrombocytopenia | obesity BMI {31-42} | nonsmoker | never smoker | "
    "lives alone | nursing home resident | wheelchair bound | ambulates with walker")
MEDICATIONS = alts(
    "metformin | metformin 1000 mg BID | lisinopril | lisinopril 20 mg | amlodipine | "
    "atorvastatin | rosuvastatin | levothyroxine | omeprazole | pantoprazole | sertraline | "
    "escitalopram | insulin glargine | albuterol prn | aspirin 81 | losartan | HCTZ | "
    "metoprolol | carvedilol | furosemide | gabapentin | tramadol prn | acetaminophen | "
    "ibuprofen prn | prednisone | apixaban | warfarin | clopidogrel | tamsulosin | "
    "finasteride | montelukast | fluticasone | vitamin D | iron supplement | semaglutide | "
    "empagliflozin | trazodone | zolpidem | duloxetine | oxycodone prn | ondansetron prn")
_MED_LEADS = ("meds: ", "on ", "current meds ", "medications: ", "takes ", "rx: ")
_PMH_LEADS = ("PMH: ", "PMHx ", "pmh ", "hx: ", "background: ", "past hx ", "PMH ", "comorbs: ")

ADMIN_NOISE = alts(
    "STAT | routine | urgent | ASAP please | please expedite | ED pt | inpatient | outpatient | "
    "pt in ED bay {1-30} | please call results to Dr. Patel | call results to Dr. Nguyen | "
    "results to Dr. Smith | cc Dr. Garcia | ordering: Dr. Okafor | call x{4000-4999} with "
    "results | pager {1000-9999} | thanks | thank you | pls | Spanish interpreter needed | "
    "pt is HOH | wheelchair | needs assistance to transfer | pt NPO | comparison: none | "
    "prior imaging at OSH | OSH images on CD | ok to page with questions | d/w attending | "
    "per ortho | per neurology | per surgery | per oncology | per PCP | per ED attending | "
    "f/u with PCP | results to PCP | pt aware | consent obtained | IV in place | 20g L AC | "
    "IV access: 18g R AC | on tele | isolation: contact | COVID neg | "
    "weight {50-140} kg | ht {150-190} cm | transport on stretcher | pt anxious | "
    "second request | reordered, first order cancelled | dc planning pending imaging | "
    "wants results before clinic {1-28}/{1-12} | insurance auth obtained | "
    "ordering provider: NP | resident order, attending aware | attending aware")

# ---------------------------------------------------------------------------------------------
# Labs with units (and SI units, as written outside the US)
# ---------------------------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"


def _si(factor: float, unit: str, decimals: int = 0) -> Callable[[float], str]:
    def convert(value: float) -> str:
        return f"{value * factor:.{decimals}f} {unit}"
    return convert


LAB_UNITS: tuple[tuple[re.Pattern[str], tuple[str, ...], tuple, tuple[str, ...]], ...] = (
    # pattern (label group, value), labels to write, SI converters, conventional units
    (re.compile(r"\b(Cr|creatinine)\s+" + _NUMBER + r"(?![\d.])"),
     ("Cr", "creatinine", "Creat", "SCr"), (_si(88.4, "umol/L"), _si(88.4, "µmol/L")),
     ("mg/dL", "mg/dl", "")),
    (re.compile(r"\b(eGFR)\s+" + _NUMBER + r"(?![\d.])"), ("eGFR", "GFR", "egfr"), (),
     ("mL/min/1.73m2", "ml/min", "mL/min", "")),
    (re.compile(r"\b(Hgb|Hb)\s+" + _NUMBER + r"(?![\d.])"), ("Hgb", "Hb", "hemoglobin"),
     (_si(10, "g/L"),), ("g/dL", "")),
    (re.compile(r"\b(WBC)\s+" + _NUMBER + r"(?![\d.])"), ("WBC", "WCC", "white count"),
     (_si(1, "x10^9/L", 1),), ("K", "k/uL", "")),
    (re.compile(r"\b(D-dimer)\s+" + _NUMBER + r"(?![\d.])"), ("D-dimer", "d-dimer", "DD",
                                                              "ddimer"),
     (_si(1000, "ng/mL FEU"),), ("mg/L FEU", "ug/mL", "")),
    (re.compile(r"\b(bili|bilirubin)\s+" + _NUMBER + r"(?![\d.])"),
     ("bili", "bilirubin", "T bili", "TBili"), (_si(17.1, "umol/L"),), ("mg/dL", "")),
    (re.compile(r"\b(PSA)\s+" + _NUMBER + r"(?![\d.])"), ("PSA",), (), ("ng/mL", "ng/ml", "")),
    (re.compile(r"\b(lactate)\s+" + _NUMBER + r"(?![\d.])"), ("lactate", "lactic acid", "lac"),
     (), ("mmol/L", "")),
    (re.compile(r"\b(CRP)\s+" + _NUMBER + r"(?![\d.])"), ("CRP",), (), ("mg/L", "")),
    (re.compile(r"\b(INR)\s+" + _NUMBER + r"(?![\d.])"), ("INR",), (), ("",)),
)

# ---------------------------------------------------------------------------------------------
# The transforms
# ---------------------------------------------------------------------------------------------


def vary(text: str, rng: random.Random, rate: float) -> str:
    """Rewrite each synonym pattern found with probability `rate` (each match on its own)."""
    if not text:
        return text
    for pattern, choices in SYNONYMS:
        if rng.random() < rate and pattern.search(text):
            text = pattern.sub(lambda _m, c=choices: rng.choice(c), text)
    return text


def britishize(text: str) -> str:
    for pattern, replacement in BRITISH:
        text = pattern.sub(replacement, text)
    return text


# a value already followed by a unit ("eGFR 43 mL/min", "Cr 2.1 mg/dL") keeps it
_UNIT_AFTER = re.compile(r"\s*[A-Za-zµ]+/")


def with_units(text: str, rng: random.Random, si: bool) -> str:
    """Write lab values with units (SI units when `si`), and sometimes a different label."""
    for pattern, labels, converters, units in LAB_UNITS:
        def one(match: re.Match[str], labels=labels, converters=converters,
                units=units) -> str:
            value = float(match.group(2))
            label = rng.choice(labels) if rng.random() < 0.5 else match.group(1)
            # the same draws either way: a corpus changes only where a unit was doubled
            written = (rng.choice(converters)(value) if si and converters
                       else " ".join(filter(None, (match.group(2), rng.choice(units)))))
            if _UNIT_AFTER.match(match.string, match.end()):
                return f"{label} {match.group(2)}"
            return f"{label} {written}"
        text = pattern.sub(one, text)
    return text


def misspell_common(text: str, rng: random.Random, rate: float) -> str:
    """Replace known words by a real-world misspelling with probability `rate` each."""
    def one(match: re.Match[str]) -> str:
        word = match.group(0)
        options = MISSPELLINGS.get(word.lower())
        if not options or rng.random() >= rate:
            return word
        return rng.choice(options)
    return re.sub(r"[A-Za-z]+", one, text)


def noise_items(rng: random.Random, sex: str,
                forbidden: re.Pattern[str] | None) -> tuple[list[str], bool]:
    """A few comorbidities or medications, written the way a problem list is pasted; True
    when they are medications."""
    items: list[str] = []
    kind = rng.random()
    pool = COMORBIDITIES if kind < 0.65 else MEDICATIONS
    picks = [fill(p, rng) for p in rng.sample(pool, k=rng.choice((1, 2, 2, 3, 4)))]
    picks = [p for p in picks if not (forbidden and forbidden.search(p))]
    if sex != "male":
        picks = [p for p in picks if p != "BPH" and "finasteride" not in p
                 and "tamsulosin" not in p]
    if sex != "female":
        picks = [p for p in picks if "hysterectomy" not in p and "C-section" not in p]
    meds = pool is MEDICATIONS
    if not picks:
        return items, meds
    lead = rng.choice(_MED_LEADS if meds else _PMH_LEADS)
    if rng.random() < 0.4:
        items.append(lead + rng.choice((", ", "; ", " ")).join(picks))
    elif meds:
        items.extend(p if rng.random() < 0.5 else "on " + p for p in picks)
    else:
        items.extend(picks)
    return items, meds


def admin_item(rng: random.Random) -> str:
    return fill(rng.choice(ADMIN_NOISE), rng)
