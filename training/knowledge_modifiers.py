"""More of the modifiers that decide a protocol, and more ways each is written or denied.

Hard orders turn on one fact: how severe a contrast allergy was, a lab value with its unit
("Cr 3.4", "eGFR 22", "on HD"), a positive hCG, whether a device is MRI conditional, the body
weight against the table limit, the hours since the patient was last known well, a prior
spine operation. The same fact written the other way ("mild hives, premedicated", "eGFR 44,
not on dialysis", "MR-conditional pacer", "native spine") must keep the protocol, so every
modifier also gets denials that look like it.

* `MORE_MODIFIER_TEXT`: evidence and negations appended to `clinical_knowledge.MODIFIERS`.
* `NEW_MODIFIERS`: modifiers of their own (key, evidence, negations, sex, age, contradicted_by).
* `MORE_REDIRECTS`: (source, modifiers, targets, indications, weight), like `REDIRECTS`.
* `MORE_NEGATIONS`: modifier keys whose denial is routinely written on a protocol's orders.
"""

from __future__ import annotations

MORE_MODIFIER_TEXT: dict[str, tuple[str, str]] = {
    "contrast_allergy": (
        "anaphylaxis after iodinated contrast in {2009-2022}, needed epinephrine | contrast "
        "reaction: hypotension and wheeze, admitted to ICU | iodinated contrast allergy - "
        "anaphylactic shock, intubated | documented severe reaction to IV contrast despite "
        "steroid premedication | prior CT contrast -> airway swelling, code called | allergy "
        "list: iohexol contrast (anaphylaxis) | severe contrast allergy, radiologist advises "
        "no iodinated contrast | contrast allergy (severe, anaphylactoid) - do not give",
        "contrast allergy: mild urticaria in {2012-2022}, premedication started | hives only "
        "after CT dye, prednisone and diphenhydramine prep ordered | mild itchy rash with "
        "contrast once, premed per protocol | allergies: iodinated contrast (hives) - 13-hour "
        "steroid prep done | contrast allergy mild (pruritus), premedicated | shellfish "
        "allergy, not a contrast allergy | seafood allergy only | had contrast CT {1-6} yrs ago "
        "without reaction | allergies: none to contrast | allergies: amoxicillin (rash)"),
    "renal_failure": (
        "Cr {2.6-6.0} | creatinine {2.5-5.8} mg/dL, eGFR {9-26} | on HD | HD-dependent ESRD | "
        "ESRD, dialysis via tunneled line | eGFR {10-29} mL/min/1.73m2 | CKD 4, not on "
        "dialysis, eGFR {15-29} | anuric, on haemodialysis | AKI, creatinine up to "
        "{3.0-5.5} | eGFR {8-29}, nephrology asks to avoid iodinated contrast | creat "
        "{265-520} umol/L",
        "CKD 3a, eGFR {45-59}, not on dialysis | CKD 3b (eGFR {30-44}), stable | eGFR "
        "{31-59} mL/min/1.73m2, stable | creatinine {1.0-1.4}, eGFR {40-60} | mild CKD, eGFR "
        "{35-58}, hydrate per protocol | eGFR {32-55}, not on dialysis | Cr {0.8-1.3} | "
        "eGFR {62-104}"),
    "pregnancy": (
        "{12-36}/40 | {14-34} weeks' gestation | G{1-4}P{0-3}, {14-36} wks | "
        "pregnant ({12-34} weeks by dates)",
        "denies pregnancy | not pregnant (urine hCG negative today) | beta-hCG negative | "
        "serum hCG <5 | LMP {3-20} days ago, UPT negative | pregnancy excluded (hCG neg) | "
        "s/p hysterectomy, not pregnant"),
    "pacemaker": (
        "pacer, not MRI conditional | pacemaker (not MR conditional) - MRI not possible | ICD "
        "with abandoned lead, MRI contraindicated | retained shrapnel, MRI declined by MRI "
        "safety officer | retained metallic foreign body near orbit, MRI contraindicated | "
        "bullet fragments (foreign body) near spinal canal, MRI unsafe | spinal cord "
        "stimulator, not MRI conditional | deep brain stimulator, non-conditional | "
        "bilateral cochlear implants, MRI contraindicated | old ferromagnetic aneurysm clip, "
        "MRI unsafe",
        "pacemaker is MRI conditional, device rep to attend | MR-conditional pacer, cleared by "
        "cardiology | MRI-conditional ICD system, EP cleared | pacer but MRI conditional "
        "(leads and generator) | no MRI contraindications | MRI safety screen negative | no "
        "implanted devices or metal | no pacemaker, no metal"),
    "claustrophobia": (
        "failed MRI x{2-3} due to claustrophobia despite lorazepam | cannot tolerate MRI "
        "(claustrophobic), no anaesthesia slot | too anxious for the MRI tube even with oral "
        "sedation | claustrophobia - aborted MRI twice, declines GA",
        "claustrophobic but fine with oral sedation | mild claustrophobia, manages with "
        "ativan | had MRI before without problems"),
    "weight_limit": (
        "weight {201-260} kg, above MRI table limit (200 kg) | {210-280} kg, too heavy for our "
        "MRI table | exceeds MRI table weight limit ({205-250} kg) | BMI {58-72}, does not fit "
        "the MRI bore | pt {215-270} kg, MRI not possible (table max 200 kg)",
        "weight {60-120} kg | BMI {22-35} | wt {58-115} kg"),
    "prior_spine_surgery": (
        "s/p L4-5 fusion {2014-2023} | post-op lumbar spine (L5-S1 discectomy {1-6} yr ago) | "
        "prior L4-L5 laminectomy, new leg pain | history of lumbar spine surgery (TLIF) | "
        "recurrent disc herniation after microdiscectomy | lumbar fusion hardware L3-S1, "
        "recurrent sciatica | previous back surgery, scar vs recurrent disc",
        "no previous spine surgery | native spine | never had spine surgery, no cancer, no "
        "fever | no prior lumbar surgery or instrumentation"),
    "stroke_acute": (
        "LKW {1-4} h ago | last known well {45-200} minutes ago | last known well {1-4} "
        "hours ago | last seen normal {1-4} hours ago | symptoms began {1-4} hours "
        "ago | onset {1-5} h ago, within window | code stroke, LKW {1-3} h, perfusion may "
        "follow | onset {40-180} min ago, thrombectomy team aware", ""),
    "stroke_extended": (
        "LKW {7-23} h | last known well {9-20} hours ago, salvageable penumbra? | wake-up "
        "stroke, LKW last night | onset {9-16} hours ago, beyond 6 h, penumbra? | LKW "
        "yesterday evening, extended window thrombectomy? | last seen well {8-22} h ago (LKW)",
        ""),
    "hematuria_painless": (
        "no pain at all | painless, visible clots | not painful, smoker {20-50} pack-years | "
        "no flank or abdominal pain, no dysuria", ""),
    "hematuria_painful": (
        "with {side} renal colic | with severe {side} loin pain and vomiting | with "
        "colicky flank pain radiating to the groin", ""),
}

# key: (evidence, negations, sex, age, contradicted_by)
NEW_MODIFIERS: dict[str, tuple[str, str, str, tuple[int, int] | None, str]] = {
    # first-trimester pregnancy shown by a positive test: pelvic or RLQ pain goes to obstetric
    # ultrasound, whatever was ordered
    "early_pregnancy": (
        "urine hCG positive | serum beta-hCG {900-4000} mIU/mL | positive pregnancy test, LMP "
        "{5-9} weeks ago | bhCG + | LMP {5-9} wk ago, UPT positive | quantitative hCG "
        "{1200-3500} | hCG {800-3000}, LMP {5-8} weeks | positive home pregnancy test, "
        "confirmed serum hCG {1000-3000}",
        "urine hCG negative | serum hCG negative | beta-hCG <5 | hCG neg today | UPT "
        "negative",
        "female", (18, 42),
        r"pregnan|hCG|ectopic|gestation|\bIUP\b|dating|abortion|\bUPT\b|\bLMP\b|/40|G\dP\d"),
    # a stroke beyond every reperfusion window, no candidate: CT to exclude bleeding first
    "stroke_late": (
        "LKW ~{26-40} h ago, not a lysis or thrombectomy candidate | symptoms since yesterday "
        "(~{28-36} h), outside all windows, r/o bleed before aspirin | onset {30-48} h ago, no "
        "reperfusion therapy planned | >24 h since onset, exclude haemorrhage before "
        "antiplatelet | weakness since yesterday morning, neuro says no intervention, r/o ICH "
        "before starting ASA",
        "", "any", None, ""),
    # a DVT order written with the chest symptoms denied: a CTPA question must not follow
    "pe_symptoms": (
        "",
        "denies chest pain or shortness of breath | no dyspnoea, sats {96-100}% on RA | no "
        "chest pain, no haemoptysis | no SOB, no pleuritic pain | breathing normal, SpO2 "
        "{96-100}%",
        "any", None,
        r"chest|SOB|short of breath|dyspn|breath|hypox|\bPE\b|pulmonary|embol|D-dimer|"
        r"tachycard|haemopt|hemopt"),
}

# (source, modifiers, targets, indications, weight)
MORE_REDIRECTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...], float],
                      ...] = (
    # acute abdominal pain or ?appendicitis with a positive hCG -> obstetric ultrasound
    ("CT Abdomen Pelvis W Contrast", ("early_pregnancy",), ("US Obstetric First Trimester",),
     (0, 1), 1.0),
    # pelvic pain or bleeding with a positive hCG -> obstetric ultrasound (?ectopic)
    ("US Pelvis Transabdominal and Transvaginal", ("early_pregnancy",),
     ("US Obstetric First Trimester",), (0, 1), 1.0),
    # MS relapse or optic neuritis in pregnancy: no gadolinium
    ("MRI Brain W and WO Contrast", ("pregnancy",), ("MRI Brain WO Contrast",), (2, 6), 0.8),
    ("scenario:stroke", ("stroke_late",), ("CT Head WO Contrast",), (), 0.7),
)

MORE_NEGATIONS: dict[str, str] = {
    "scenario:hematuria": "renal_failure pregnancy",
    "US Lower Extremity Venous Duplex": "pe_symptoms pregnancy",
    "US Abdomen Right Upper Quadrant": "pregnancy",
    "US Carotid Duplex": "renal_failure",
    "CT Urography": "renal_failure contrast_allergy",
    "CTA Chest Pulmonary Embolism": "contrast_allergy renal_failure pregnancy",
    "CT Chest W Contrast": "contrast_allergy renal_failure",
    "MRI Brain W and WO Contrast": "pacemaker pregnancy",
    "CT Abdomen Pelvis W Contrast": "pregnancy early_pregnancy",
    "US Pelvis Transabdominal and Transvaginal": "early_pregnancy",
}
