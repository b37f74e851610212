"""Clinical knowledge: musculoskeletal, breast, cardiac MRI, vascular, scrotal, NM and PET."""

from __future__ import annotations

from radproto.training.knowledge_base import ind, protocol

OTHER = [
    protocol("MRI Knee WO Contrast", [
        ind("ACL tear | r/o ACL tear | c/f ACL rupture | {side} knee ACL injury",
            "S83.511A Sprain of anterior cruciate ligament of right knee, initial encounter",
            "positive Lachman | pop at time of injury | hemarthrosis"),
        ind("meniscal tear | r/o meniscus tear | medial meniscus tear | c/f lateral meniscal "
            "tear",
            "S83.241A Other tear of medial meniscus, current injury, right knee, initial "
            "encounter", "positive McMurray | locking | joint line tenderness"),
        ind("knee instability after twisting injury | twisting injury {side} knee, giving way | "
            "knee giving way",
            "M23.51 Chronic instability of knee, right knee", "soccer injury | effusion"),
        ind("persistent knee pain | chronic {side} knee pain | knee pain not improving with PT",
            "M25.561 Pain in right knee; M25.562 Pain in left knee",
            "x-rays negative | failed {6-12} wks PT"),
    ], history="prior knee arthroscopy | contralateral ACL reconstruction", meds="on ibuprofen",
       age=(14, 70),
       vague="MRI knee | MR knee | {side} knee MRI | MRI extremity",
       precise="MRI knee without contrast | MRI {side} knee w/o | MR knee noncontrast",
       negations="pacemaker trauma"),

    protocol("MRI Shoulder WO Contrast", [
        ind("rotator cuff tear | r/o RTC tear | c/f full thickness rotator cuff tear | "
            "supraspinatus tear",
            "M75.101 Unspecified rotator cuff tear or rupture of right shoulder, not specified "
            "as traumatic; S46.011A Strain of muscle(s) and tendon(s) of the rotator cuff of "
            "right shoulder, initial encounter", "weak external rotation | drop arm +"),
        ind("shoulder impingement | impingement syndrome {side} shoulder | subacromial "
            "impingement",
            "M75.41 Impingement syndrome of right shoulder",
            "positive Neer and Hawkins | failed injection"),
        ind("shoulder pain with weakness | {side} shoulder pain and weakness | chronic "
            "shoulder pain",
            "M25.511 Pain in right shoulder", "night pain | painful arc | age {50-75}"),
    ], history="DM2 | prior shoulder injection", meds="s/p steroid injection", age=(35, 80),
       vague="MRI shoulder | MR shoulder | {side} shoulder MRI | MRI extremity",
       precise="MRI shoulder without contrast | MRI {side} shoulder w/o",
       negations="pacemaker trauma"),

    protocol("MR Arthrogram Shoulder", [
        ind("labral tear | r/o labral tear | c/f anterior labral tear | Bankart lesion",
            "S43.431A Superior glenoid labrum lesion of right shoulder, initial encounter",
            "clicking | apprehension test + | overhead athlete"),
        ind("recurrent shoulder dislocation | shoulder instability in young athlete | "
            "recurrent anterior instability | dislocated {side} shoulder x{2-5}",
            "M24.411 Recurrent dislocation, right shoulder; M25.311 Other instability, right "
            "shoulder", "college football player | {2-5} dislocations"),
        ind("SLAP lesion | r/o SLAP tear | c/f superior labral tear",
            "S43.431A Superior glenoid labrum lesion of right shoulder, initial encounter",
            "pitcher | positive O'Brien"),
    ], history="prior dislocation | prior shoulder surgery", age=(15, 40),
       vague="MRI shoulder | MR shoulder | shoulder MRI with contrast | MRI arthrogram",
       precise="MR arthrogram shoulder | MRA shoulder | shoulder arthrogram MRI",
       negations="pacemaker"),

    protocol("MRI Breast W and WO Contrast", [
        ind("high-risk breast cancer screening | BRCA1 carrier screening | BRCA2 annual MRI | "
            "lifetime risk >20%, screening MRI",
            "Z15.01 Genetic susceptibility to malignant neoplasm of breast; Z80.3 Family "
            "history of malignant neoplasm of breast",
            "lifetime risk {21-45}% | mother with breast ca at 42 | alternating with mammo"),
        ind("extent of newly diagnosed breast cancer | new breast cancer, eval extent of "
            "disease | pre-op MRI new {side} breast IDC",
            "C50.911 Malignant neoplasm of unspecified site of right female breast",
            "biopsy-proven IDC | dense breasts | ILC"),
        ind("implant rupture | r/o silicone implant rupture | c/f breast implant rupture",
            "T85.41XA Breakdown (mechanical) of breast prosthesis and implant, initial "
            "encounter", "silicone implants placed {8-20} yrs ago | contour change"),
    ], sex="female", history="family hx breast ca | dense breasts | prior chest radiation",
       age=(25, 75), vague="MRI breast | breast MRI | bilateral breast MRI | MR breasts",
       precise="MRI breast with and without contrast | bilateral breast MRI w/wo",
       negations="pacemaker claustrophobia"),

    protocol("MRI Cardiac W and WO Contrast", [
        ind("cardiomyopathy | new cardiomyopathy | nonischemic cardiomyopathy eval | "
            "HCM | r/o hypertrophic cardiomyopathy",
            "I42.9 Cardiomyopathy, unspecified; I42.2 Other hypertrophic cardiomyopathy",
            "EF {20-40}% on echo | LVH on echo | normal coronaries on cath"),
        ind("myocarditis | r/o myocarditis | c/f viral myocarditis",
            "I40.9 Acute myocarditis, unspecified",
            "troponin elevated, normal cath | recent viral illness"),
        ind("infiltrative heart disease | r/o cardiac amyloid | r/o cardiac sarcoid",
            "E85.4 Organ-limited amyloidosis; D86.85 Sarcoid myocarditis",
            "low voltage ECG | heart block | thick walls"),
        ind("viability before revascularization | myocardial viability | viability study "
            "pre-CABG",
            "I25.5 Ischemic cardiomyopathy", "multivessel CAD | EF {20-35}%"),
    ], history="HTN | CHF | family hx sudden death", labs="BNP {150-1500} | eGFR {45-110}",
       age=(18, 80), vague="MRI heart | cardiac MR | MRI | heart MRI",
       precise="cardiac MRI | CMR with gadolinium | MRI heart w/wo",
       negations="pacemaker claustrophobia"),

    protocol("US Lower Extremity Venous Duplex", [
        ind("suspected deep vein thrombosis | r/o DVT | c/f {side} LE DVT | eval for DVT",
            "I82.401 Acute embolism and thrombosis of unspecified deep veins of right lower "
            "extremity; R60.0 Localized edema",
            "Wells {2-5} | D-dimer {0.6-3.0} | post-op"),
        ind("unilateral leg swelling | {side} leg swelling | {side} calf swelling | "
            "asymmetric leg edema",
            "R22.41 Localized swelling, mass and lump, right lower limb; R22.42 Localized "
            "swelling, mass and lump, left lower limb",
            "{2-4} cm calf asymmetry | pitting edema"),
        ind("calf pain | {side} calf pain | calf tenderness",
            "M79.661 Pain in right lower leg; M79.662 Pain in left lower leg",
            "Homans sign | recent long flight"),
    ], history="recent surgery | immobilization | OCP use | cancer | h/o DVT",
       meds="on OCPs | on tamoxifen", age=(18, 90),
       vague="US leg | LE venous US | venous doppler | doppler {side} leg | US extremity",
       precise="LE venous duplex | lower extremity DVT study | venous duplex {side} leg"),

    protocol("US Scrotum", [
        ind("testicular pain | {side} testicular pain | scrotal pain | acute scrotal pain",
            "N50.811 Right testicular pain; N50.812 Left testicular pain",
            "onset {2-12} h ago | swollen hemiscrotum"),
        ind("suspected testicular torsion | r/o torsion | c/f testicular torsion",
            "N44.00 Torsion of testis, unspecified",
            "absent cremasteric reflex | high-riding testis | sudden onset"),
        ind("scrotal mass | testicular mass | palpable testicular lump | {side} testicular "
            "nodule",
            "N50.89 Other specified disorders of the male genital organs",
            "firm painless nodule | noticed in shower"),
        ind("epididymitis | r/o epididymitis | epididymo-orchitis",
            "N45.1 Epididymitis", "dysuria | fever | tender epididymis"),
    ], sex="male", age=(12, 80),
       vague="US scrotum | testicular US | scrotal ultrasound | US testes | US",
       precise="scrotal ultrasound with doppler | US scrotum complete",
       negations="trauma"),

    protocol("NM Bone Scan Whole Body", [
        ind("osseous metastases in prostate cancer | prostate ca, r/o bone mets | "
            "bone mets eval, prostate cancer | high-risk prostate ca staging bones",
            "C61 Malignant neoplasm of prostate; C79.51 Secondary malignant neoplasm of bone",
            "PSA {20-150} | Gleason {8-9}", sex="male", age=(50, 88)),
        ind("osseous metastases in breast cancer | breast ca, r/o bone mets | "
            "bone metastases breast cancer",
            "C50.919 Malignant neoplasm of unspecified site of unspecified female breast; "
            "C79.51 Secondary malignant neoplasm of bone",
            "new bone pain | elevated ALP", sex="female", age=(30, 85)),
        ind("diffuse bone pain with known malignancy | bone pain, known cancer | "
            "multifocal bone pain in cancer pt",
            "C79.51 Secondary malignant neoplasm of bone; R52 Pain, unspecified",
            "ALP {150-500} | hip and rib pain"),
        ind("occult fracture | r/o occult fracture | stress fracture, x-rays negative",
            "M84.30XA Stress fracture, unspecified site, initial encounter for fracture",
            "x-rays negative | runner | MRI not possible"),
    ], labs="ALP {90-500}", age=(30, 88),
       vague="bone scan | NM bone | whole body bone scan | nuclear bone scan",
       precise="NM bone scan whole body | Tc-99m MDP bone scan"),

    protocol("PET CT FDG Skull Base to Mid Thigh", [
        ind("lymphoma staging | lymphoma restaging | DLBCL staging | Hodgkin lymphoma interim "
            "PET | treatment response lymphoma",
            "C83.30 Diffuse large B-cell lymphoma, unspecified site; C81.90 Hodgkin lymphoma, "
            "unspecified, unspecified site", "after cycle {2-4} | B symptoms"),
        ind("lung cancer staging PET | NSCLC staging, PET | staging new lung cancer with PET",
            "C34.90 Malignant neoplasm of unspecified part of unspecified bronchus or lung",
            "surgical candidacy | mediastinal nodes on CT"),
        ind("melanoma restaging | melanoma staging | stage III melanoma",
            "C43.9 Malignant melanoma of skin, unspecified", "on pembrolizumab"),
        ind("colorectal cancer restaging with rising CEA | rising CEA after colon ca resection | "
            "colon ca recurrence eval",
            "C18.9 Malignant neoplasm of colon, unspecified; Z85.038 Personal history of "
            "other malignant neoplasm of large intestine", "CEA {8-120}"),
        ind("solitary pulmonary nodule characterization | SPN >8 mm, PET | "
            "indeterminate lung nodule, PET eval",
            "R91.1 Solitary pulmonary nodule", "1.4 cm solid nodule | smoker"),
    ], history="diabetes (check glucose) | prior chemo", labs="glucose {80-160}",
       age=(20, 85), vague="PET | PET CT | PET/CT | PET scan | NM PET",
       precise="FDG PET CT | PET/CT skull base to mid thigh | FDG PET/CT whole body"),
]
