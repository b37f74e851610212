"""More indications where the imaging already done, or the question behind a cancer or a
known disease, decides the next study (a thyroid focus on PET -> thyroid ultrasound; a
normal head CT after a first seizure -> MRI). Appended like `knowledge_extra.EXTRA`, so the
indication numbers that the redirects refer to stay the same."""

from __future__ import annotations

from radproto.training.knowledge_base import ind
from radproto.training.knowledge_extra import Extra, _x

FOLLOWUP: dict[str, Extra] = {
    "US Thyroid": _x([
        ind("focal FDG uptake in the thyroid on PET-CT | incidental FDG-avid thyroid focus | "
            "thyroid incidentaloma on staging PET | PET-avid nodule in {side} thyroid lobe, "
            "SUV {4-12}"),
    ]),
    "MRI Brain W and WO Contrast": _x([
        ind("first unprovoked seizure, ED head CT negative | new-onset seizure, CT head "
            "unremarkable, needs MRI | seizure with a normal CT, further brain imaging | "
            "first fit, non-contrast CT normal"),
    ]),
    "NM Bone Scan Whole Body": _x([
        ind("high-risk prostate cancer staging, PSA {20-90} | rising PSA after prostatectomy, "
            "PSA {2-30} | biochemical recurrence of prostate cancer | Gleason {8-10} prostate "
            "adenocarcinoma, staging for bone mets", sex="male", age=(50, 88)),
        ind("hip pain after a fall, radiographs negative, MRI not possible | occult fracture, "
            "MRI contraindicated | ?stress fracture, cannot have MRI (device)"),
    ]),
    "PET CT FDG Skull Base to Mid Thigh": _x([
        ind("staging newly diagnosed NSCLC | new lung adenocarcinoma, staging | biopsy-proven "
            "lung cancer, staging before surgery | squamous cell lung carcinoma, initial "
            "staging"),
    ]),
    "MRI Pelvis W and WO Contrast": _x([
        ind("perianal fistula | perianal Crohn disease with fistula | fistula-in-ano mapping "
            "before surgery | perianal abscess or fistula in Crohn's"),
    ]),
    "MRI Abdomen W and WO Contrast": _x([
        ind("LI-RADS 3 observation on CT | indeterminate liver observation in cirrhosis | LR-4 "
            "lesion, problem solving | indeterminate liver lesion on CT, hepatobiliary agent "
            "MRI"),
    ]),
    "CT Chest W Contrast": _x([
        ind("lymphoma surveillance after chemotherapy | Hodgkin follow-up, mediastinal mass | "
            "post-treatment lymphoma follow-up | bulky mediastinal lymphoma, end of treatment"),
    ]),
    "XR Chest 2 Views": _x([
        ind("heart failure exacerbation | CHF with worsening dyspnoea and oedema | fluid "
            "overload, bibasal crackles | decompensated CHF"),
    ]),
    "MRCP": _x([
        ind("recurrent idiopathic pancreatitis | ?pancreas divisum | recurrent acute "
            "pancreatitis, ductal anatomy | unexplained recurrent pancreatitis, ?CBD stone"),
    ]),
    "NM Hepatobiliary HIDA": _x([
        ind("equivocal ultrasound for cholecystitis | US indeterminate for acute "
            "cholecystitis | gallstones on US without wall thickening, ?cholecystitis | "
            "Murphy sign unreliable on US, ?acalculous cholecystitis"),
    ]),
    "CT Abdomen W Contrast": _x([
        ind("perinephric hematoma after renal biopsy | bleeding after kidney biopsy, Hb "
            "falling | post-biopsy flank pain and hypotension"),
    ]),
}
