"""Clinical knowledge: head, neck and spine protocols (and the acute stroke scenario)."""

from __future__ import annotations

from radproto.training.knowledge_base import ind, protocol

NEURO = [
    protocol("CT Head WO Contrast", [
        ind("acute head trauma | head injury | head strike | s/p fall with head strike | "
            "blunt head trauma | hit head on pavement",
            "S09.90XA Unspecified injury of head, initial encounter; "
            "W19.XXXA Unspecified fall, initial encounter",
            "GCS {13-15} | brief LOC | scalp hematoma | vomiting x2 since injury | "
            "amnestic to event | occipital laceration"),
        ind("fall on anticoagulation | fall while on blood thinners | mechanical fall on "
            "apixaban | fall on warfarin, hit head | ground-level fall on Eliquis",
            "W19.XXXA Unspecified fall, initial encounter; "
            "Z79.01 Long term (current) use of anticoagulants",
            "INR {2.1-3.8} | no LOC | small forehead abrasion | GCS 15"),
        ind("thunderclap headache | worst headache of life | sudden severe headache, r/o SAH | "
            "acute onset severe HA, eval for bleed | c/f subarachnoid hemorrhage",
            "R51.9 Headache, unspecified",
            "onset during exertion | peak intensity within 1 min | neck stiffness | "
            "BP {165-210}/{90-115}"),
        ind("altered mental status | AMS | acute confusion | new confusion, r/o bleed | "
            "acute encephalopathy | found down, confused",
            "R41.82 Altered mental status, unspecified; R41.0 Disorientation, unspecified",
            "GCS {9-14} | lethargic | not at baseline per family | new disorientation"),
    ], history="HTN | afib on anticoagulation | prior falls | dementia | alcohol use disorder | "
       "ESRD", labs="INR {1.0-3.5} | plt {40-300}K | Na {124-142}",
       meds="on apixaban | on warfarin | on rivaroxaban | on clopidogrel | on aspirin",
       age=(18, 95), vague="CT head | head CT | CT brain | CTH | noncon head | imaging head",
       precise="CT head without contrast | CT head w/o | noncontrast CT head | NCHCT",
       negations="contrast_allergy trauma"),

    protocol("CT Head W and WO Contrast", [
        ind("brain abscess follow-up | known cerebral abscess on IV abx, interval eval | "
            "f/u brain abscess s/p drainage",
            "G06.0 Intracranial abscess and granuloma",
            "fever resolved | on ceftriaxone and metronidazole | s/p burr hole aspiration"),
    ], history="endocarditis | IVDU | sinusitis | dental abscess", labs="WBC {8.0-19.0}",
       age=(20, 85), vague="CT head | CT head with contrast | head CT w/wo",
       precise="CT head with and without contrast | CT head w/wo contrast | CT brain w+w/o"),

    protocol("CTA Head and Neck", [
        ind("carotid dissection | r/o carotid dissection | c/f vertebral artery dissection | "
            "eval for cervical artery dissection | vertebral dissection",
            "I77.71 Dissection of carotid artery; I77.74 Dissection of vertebral artery",
            "neck pain and Horner syndrome | after chiropractic manipulation | "
            "unilateral headache and neck pain | partial ptosis and miosis"),
        ind("penetrating neck trauma | GSW to neck | stab wound neck | blunt neck trauma with "
            "seatbelt sign | expanding neck hematoma",
            "S19.9XXA Unspecified injury of neck, initial encounter",
            "zone II injury | bruit over carotid | seatbelt sign across neck"),
        ind("crescendo TIA | recurrent TIAs today | TIA x3 in 24h, r/o LVO or stenosis | "
            "acute TIA in ED, eval vessels",
            "G45.9 Transient cerebral ischemic attack, unspecified",
            "transient R arm weakness | aphasia resolved after 20 min | ABCD2 {4-7}"),
    ], history="HTN | HLD | afib | smoker | prior TIA", labs="glucose {90-180} | Cr {0.7-1.2}",
       age=(25, 85), vague="CTA neck | CTA head | CT angiogram head and neck | CTA H&N | "
       "neck vessels", precise="CT angiography head and neck | CTA head & neck",
       negations="contrast_allergy renal_failure"),

    protocol("CT Brain Perfusion", [], age=(40, 90),
             vague="CT perfusion | CTP | stroke protocol | code stroke imaging",
             precise="CT perfusion head | CT brain perfusion study"),

    protocol("CT Sinus WO Contrast", [
        ind("chronic rhinosinusitis | chronic sinusitis | CRS | recurrent sinusitis | "
            "chronic sinus congestion",
            "J32.9 Chronic sinusitis, unspecified; J32.0 Chronic maxillary sinusitis",
            "failed {2-4} courses of abx | >12 wks nasal congestion | facial pressure | "
            "purulent drainage"),
        ind("pre-op FESS planning | pre-operative endoscopic sinus surgery planning | "
            "image guidance for FESS | sinus surgery planning",
            "J32.9 Chronic sinusitis, unspecified",
            "ENT planning | stealth protocol requested | surgery scheduled"),
        ind("nasal polyps | nasal polyposis | sinonasal polyps",
            "J33.9 Nasal polyp, unspecified",
            "anosmia | bilateral polyps on endoscopy | asthma"),
    ], history="asthma | allergic rhinitis | aspirin sensitivity | septal deviation",
       meds="on fluticasone nasal spray | s/p amoxicillin-clavulanate x3 wks",
       vague="CT sinus | CT sinuses | sinus CT | CT face/sinus",
       precise="CT sinuses without contrast | CT sinus w/o | noncontrast CT sinus",
       negations="contrast_allergy"),

    protocol("CT Maxillofacial WO Contrast", [
        ind("facial trauma | facial fracture | face injury after assault | punched in face | "
            "facial injury s/p MVC",
            "S02.92XA Unspecified fracture of facial bones, initial encounter for closed "
            "fracture; S00.83XA Contusion of other part of head, initial encounter",
            "periorbital swelling | malocclusion | epistaxis | facial deformity"),
        ind("orbital floor fracture | r/o blowout fracture | orbital fracture | "
            "c/f orbital floor fx",
            "S02.30XA Fracture of orbital floor, unspecified side, initial encounter for "
            "closed fracture",
            "diplopia on upgaze | enophthalmos | infraorbital numbness"),
        ind("mandible fracture | jaw fracture | r/o mandible fx | zygoma fracture | "
            "zygomatic arch fracture",
            "S02.609A Fracture of mandible, unspecified, initial encounter for closed fracture",
            "trismus | step-off along mandible | malocclusion | cheek flattening"),
        ind("assault to face | hit in face with fist | struck in face",
            "Y04.0XXA Assault by unarmed fight, initial encounter; "
            "S00.83XA Contusion of other part of head, initial encounter",
            "midface tenderness | nasal bone deformity | periorbital ecchymosis"),
    ], history="ETOH | prior facial fracture", age=(16, 80),
       vague="CT face | CT facial bones | maxillofacial CT | CT orbits",
       precise="CT maxillofacial without contrast | CT facial bones w/o | CT max face noncon",
       negations="contrast_allergy"),

    protocol("CT Temporal Bones WO Contrast", [
        ind("conductive hearing loss | CHL | conductive HL {side} ear | otosclerosis eval",
            "H90.2 Conductive hearing loss, unspecified",
            "air-bone gap on audiogram | normal TM | Rinne negative"),
        ind("cholesteatoma | r/o cholesteatoma | c/f cholesteatoma {side} ear | "
            "recurrent cholesteatoma",
            "H71.90 Unspecified cholesteatoma, unspecified ear",
            "chronic otorrhea | retraction pocket | s/p mastoidectomy"),
        ind("temporal bone fracture | r/o temporal bone fx | hemotympanum after head trauma",
            "S02.19XA Other fracture of base of skull, initial encounter for closed fracture",
            "battle sign | CSF otorrhea | facial nerve weakness after fall"),
        ind("cochlear implant planning | cochlear implant candidate | pre-op cochlear implant",
            "H90.3 Sensorineural hearing loss, bilateral",
            "profound bilateral SNHL | failed hearing aids"),
    ], history="chronic otitis media | prior ear surgery", age=(5, 85),
       vague="CT temporal bones | CT IAC | CT ears | CT temporal bone",
       precise="CT temporal bones without contrast | CT temporal bone w/o",
       negations="contrast_allergy"),

    protocol("CT Soft Tissue Neck W Contrast", [
        ind("neck mass | palpable neck mass | new {side} neck mass | enlarging neck lump",
            "R22.1 Localized swelling, mass and lump, neck",
            "firm 3 cm mass | nontender | present x {3-10} wks"),
        ind("deep neck abscess | r/o neck abscess | c/f deep neck space infection | "
            "retropharyngeal abscess",
            "J39.0 Retropharyngeal and parapharyngeal abscess",
            "fever | trismus | neck swelling | odynophagia | WBC {13.0-24.0}"),
        ind("peritonsillar abscess | r/o PTA | c/f peritonsillar abscess",
            "J36 Peritonsillar abscess", "uvular deviation | hot potato voice | trismus"),
        ind("head and neck cancer staging | staging oropharyngeal SCC | H&N SCC staging | "
            "laryngeal cancer staging",
            "C76.0 Malignant neoplasm of head, face and neck",
            "biopsy-proven SCC | p16+ | hoarseness"),
        ind("cervical lymphadenopathy | enlarged neck lymph nodes | persistent cervical LAD",
            "R59.0 Localized enlarged lymph nodes",
            "nodes >2 cm | night sweats | weight loss"),
    ], history="smoker | ETOH | HPV+ | diabetes", labs="WBC {4.5-22.0} | Cr {0.6-1.2}",
       age=(18, 85), vague="CT neck | neck CT | CT soft tissue neck | CT neck with contrast",
       precise="CT soft tissue neck with contrast | CT neck w contrast | CT STN w/",
       negations="contrast_allergy renal_failure"),

    protocol("CT Cervical Spine WO Contrast", [
        ind("neck trauma | cervical spine trauma | neck pain after MVC | c-spine injury | "
            "neck pain s/p fall",
            "S19.9XXA Unspecified injury of neck, initial encounter; "
            "V89.2XXA Person injured in unspecified motor-vehicle accident, traffic, "
            "initial encounter",
            "in c-collar | restrained driver | rollover | ejected"),
        ind("high-risk mechanism | fall from height | diving injury | high speed MVC",
            "W13.9XXA Fall from, out of or through building, not otherwise specified, "
            "initial encounter",
            "fall from {8-20} ft | age >65 | paresthesias in arms"),
        ind("midline cervical tenderness | midline c-spine tenderness | neck tenderness after "
            "trauma, fails NEXUS",
            "M54.2 Cervicalgia",
            "fails NEXUS | fails Canadian C-spine rule | pain with rotation"),
        ind("suspected cervical fracture | r/o c-spine fx | c/f cervical spine fracture",
            "S12.9XXA Fracture of neck, unspecified, initial encounter",
            "step-off | neuro intact | reduced ROM"),
    ], history="ankylosing spondylitis | osteoporosis | ETOH", age=(16, 95),
       vague="CT c-spine | CT cervical spine | CT neck | c-spine imaging",
       precise="CT cervical spine without contrast | CT C-spine w/o | noncon CT c-spine",
       negations="contrast_allergy"),

    protocol("CT Lumbar Spine WO Contrast", [
        ind("lumbar spine trauma | back pain after fall | low back injury s/p fall from ladder | "
            "lumbar spine injury after MVC",
            "S39.92XA Unspecified injury of lower back, initial encounter; "
            "W11.XXXA Fall on and from ladder, initial encounter",
            "midline lumbar tenderness | fell {6-15} ft | unable to ambulate"),
        ind("suspected lumbar fracture | r/o L-spine fracture | c/f lumbar compression fracture "
            "after fall | r/o burst fracture",
            "S32.009A Unspecified fracture of unspecified lumbar vertebra, initial encounter "
            "for closed fracture",
            "point tenderness L1 | osteoporosis | on chronic steroids"),
    ], history="osteoporosis | chronic steroid use | prior compression fracture", age=(18, 95),
       vague="CT L-spine | CT lumbar spine | CT LS spine | CT back",
       precise="CT lumbar spine without contrast | CT L-spine w/o",
       negations="contrast_allergy"),

    protocol("MRI Brain WO Contrast", [
        ind("dementia | memory loss | cognitive decline | progressive memory impairment | "
            "r/o neurodegenerative process | MCI workup",
            "R41.3 Other amnesia; G30.9 Alzheimer's disease, unspecified; "
            "F03.90 Unspecified dementia, unspecified severity, without behavioral disturbance, "
            "psychotic disturbance, mood disturbance, and anxiety",
            "MoCA {14-24}/30 | word-finding difficulty | gets lost driving | 2 yr decline"),
        ind("chronic headache without red flags | chronic daily headache | migraine with "
            "change in pattern, no focal deficits | longstanding headaches",
            "R51.9 Headache, unspecified; G43.909 Migraine, unspecified, not intractable, "
            "without status migrainosus",
            "normal neuro exam | no papilledema | headaches x {1-10} yrs"),
        ind("evaluation of prior stroke | old stroke, eval extent | h/o remote CVA, baseline "
            "imaging | prior infarct on CT, characterize",
            "Z86.73 Personal history of transient ischemic attack (TIA), and cerebral "
            "infarction without residual deficits; I69.30 Unspecified sequelae of cerebral "
            "infarction",
            "residual L hand weakness | stroke {1-5} yrs ago"),
    ], history="HTN | DM2 | HLD | depression | family hx dementia",
       labs="B12 {180-900} | TSH {0.5-4.5} | RPR neg",
       meds="on donepezil | on sumatriptan prn | on topiramate",
       age=(40, 92), vague="MRI brain | MR brain | brain MRI | MRI head | MRI",
       precise="MRI brain without contrast | MRI brain w/o | MR brain noncontrast",
       negations="pacemaker claustrophobia"),

    protocol("MRI Brain W and WO Contrast", [
        ind("brain tumor | brain mass | r/o brain tumor | intracranial mass on CT | "
            "new brain lesion on CT",
            "R90.0 Intracranial space-occupying lesion found on diagnostic imaging of central "
            "nervous system; C71.9 Malignant neoplasm of brain, unspecified",
            "ring-enhancing lesion on CT | vasogenic edema | progressive headaches"),
        ind("brain metastases | r/o brain mets | staging brain for metastases | "
            "eval for intracranial metastatic disease",
            "C79.31 Secondary malignant neoplasm of brain; C34.90 Malignant neoplasm of "
            "unspecified part of unspecified bronchus or lung",
            "new lung adenocarcinoma | melanoma stage III | new headaches with known cancer"),
        ind("multiple sclerosis | MS | r/o demyelinating disease | c/f MS | MS follow-up",
            "G35 Multiple sclerosis",
            "optic neuritis | numbness with Lhermitte sign | on ocrelizumab | relapse"),
        ind("new onset seizure | first seizure | first-time seizure | new seizure in adult",
            "R56.9 Unspecified convulsions",
            "GTC seizure | post-ictal confusion | CT head negative in ED"),
        ind("CNS infection | r/o encephalitis | c/f meningitis complication | "
            "eval for brain abscess",
            "G04.90 Encephalitis and encephalomyelitis, unspecified; "
            "G06.0 Intracranial abscess and granuloma",
            "fever and confusion | CSF pleocytosis | HIV CD4 {20-180}"),
    ], history="lung cancer | breast cancer | melanoma | HIV | prior craniotomy",
       labs="Cr {0.6-1.2} | eGFR {60-110}",
       meds="on dexamethasone | on levetiracetam | on ocrelizumab",
       age=(18, 85), vague="MRI brain | MR brain | MRI head | brain MRI w contrast | MRI",
       precise="MRI brain with and without contrast | MRI brain w/wo | MR brain w+w/o gad",
       negations="pacemaker claustrophobia contrast_allergy"),

    protocol("MRI Pituitary W and WO Contrast", [
        ind("pituitary adenoma | pituitary mass | r/o pituitary tumor | sellar mass | "
            "pituitary microadenoma f/u",
            "D35.2 Benign neoplasm of pituitary gland",
            "sellar mass on CT | headaches"),
        ind("hyperprolactinemia | elevated prolactin | galactorrhea with high prolactin",
            "E22.1 Hyperprolactinemia",
            "prolactin {45-250} | amenorrhea | galactorrhea"),
        ind("bitemporal hemianopia | bitemporal visual field defect | visual field cut, "
            "r/o chiasm compression",
            "H53.47 Heteronymous bilateral field defects", "abnormal Humphrey fields"),
        ind("acromegaly | elevated IGF-1 | r/o GH-secreting adenoma",
            "E22.0 Acromegaly and pituitary gigantism", "IGF-1 {450-900} | coarse features"),
        ind("Cushing disease | ACTH-dependent Cushing | hypercortisolism, r/o pituitary source",
            "E24.0 Pituitary-dependent Cushing's disease",
            "elevated late-night salivary cortisol | ACTH {40-120}"),
    ], age=(18, 75), vague="MRI brain | MRI sella | MRI pituitary | MR sella",
       precise="MRI pituitary with and without contrast | MRI sella w/wo | pituitary protocol MRI",
       negations="pacemaker claustrophobia"),

    protocol("MRI Internal Auditory Canals W and WO Contrast", [
        ind("asymmetric sensorineural hearing loss | asymmetric SNHL | unilateral SNHL {side} | "
            "sudden SNHL {side} ear",
            "H90.41 Sensorineural hearing loss, unilateral, right ear, with unrestricted "
            "hearing on the contralateral side; H90.42 Sensorineural hearing loss, unilateral, "
            "left ear, with unrestricted hearing on the contralateral side",
            "15 dB asymmetry on audiogram | poor word recognition {side}"),
        ind("unilateral tinnitus | {side}-sided tinnitus | pulsatile-free unilateral tinnitus",
            "H93.11 Tinnitus, right ear; H93.12 Tinnitus, left ear", "with hearing asymmetry"),
        ind("vestibular schwannoma | r/o acoustic neuroma | c/f CP angle mass | "
            "acoustic neuroma follow-up",
            "D33.3 Benign neoplasm of cranial nerves", "imbalance | known 6 mm IAC lesion"),
    ], history="noise exposure | NF2", age=(20, 80),
       vague="MRI IAC | MRI brain | MRI internal auditory canals | MRI ears",
       precise="MRI IACs with and without contrast | MRI IAC w/wo | MR internal auditory canals",
       negations="pacemaker"),

    protocol("MRA Head WO Contrast", [
        ind("intracranial aneurysm screening | aneurysm screening with family history | "
            "screening for brain aneurysm, 2 first-degree relatives with SAH",
            "Z82.49 Family history of ischemic heart disease and other diseases of the "
            "circulatory system; Z13.6 Encounter for screening for cardiovascular disorders",
            "mother and sister with ruptured aneurysm | asymptomatic"),
        ind("aneurysm follow-up | known unruptured aneurysm f/u | f/u 4 mm ACOM aneurysm | "
            "surveillance of small MCA aneurysm",
            "I67.1 Cerebral aneurysm, nonruptured", "stable on prior MRA | annual surveillance"),
        ind("polycystic kidney disease screening | ADPKD, screen for aneurysm | "
            "PCKD with family hx of SAH",
            "Q61.2 Polycystic kidney, adult type", "ADPKD"),
    ], history="HTN | smoker", age=(25, 75),
       vague="MRA head | MRA brain | MR angiogram head | MRA circle of Willis | brain MRA",
       precise="MRA head without contrast | MRA brain w/o | TOF MRA head",
       negations="pacemaker"),

    protocol("MRI Cervical Spine WO Contrast", [
        ind("cervical radiculopathy | {side} C6 radiculopathy | radicular arm pain | "
            "neck pain radiating down {side} arm",
            "M54.12 Radiculopathy, cervical region",
            "failed {6-12} wks PT | positive Spurling | numbness thumb and index finger"),
        ind("cervical myelopathy | r/o cord compression | c/f cervical myelopathy | "
            "gait instability and hand clumsiness",
            "M47.12 Other spondylosis with myelopathy, cervical region; "
            "M48.02 Spinal stenosis, cervical region",
            "hyperreflexia | positive Hoffmann | falls | dropping objects"),
        ind("neck pain with arm weakness | neck pain with arm numbness | neck pain w/ "
            "{side} arm paresthesias",
            "M54.2 Cervicalgia; R20.2 Paresthesia of skin",
            "4/5 triceps | decreased sensation C7"),
    ], history="DJD | prior ACDF consult", meds="on gabapentin | on meloxicam",
       age=(25, 85), vague="MRI c-spine | MRI cervical spine | MRI neck | MR C spine",
       precise="MRI cervical spine without contrast | MRI C-spine w/o",
       negations="pacemaker claustrophobia trauma"),

    protocol("MRI Thoracic Spine WO Contrast", [
        ind("thoracic radiculopathy | band-like chest wall pain, r/o thoracic disc | "
            "T-spine radiculopathy",
            "M54.14 Radiculopathy, thoracic region", "dermatomal pain T8 | shingles excluded"),
        ind("thoracic myelopathy | r/o thoracic cord compression | c/f thoracic myelopathy",
            "M47.14 Other spondylosis with myelopathy, thoracic region",
            "spastic gait | sensory level T10 | bilateral leg weakness"),
        ind("thoracic compression fracture evaluation | T-spine compression fx, acute vs "
            "chronic | eval thoracic compression deformity",
            "M48.54XA Collapsed vertebra, not elsewhere classified, thoracic region, initial "
            "encounter for fracture; M80.08XA Age-related osteoporosis with current "
            "pathological fracture, vertebra(e), initial encounter for fracture",
            "T12 wedge deformity on x-ray | kyphoplasty planning"),
    ], history="osteoporosis | DJD", meds="on alendronate", age=(35, 90),
       vague="MRI T-spine | MRI thoracic spine | MRI mid back | MR T spine",
       precise="MRI thoracic spine without contrast | MRI T-spine w/o",
       negations="pacemaker claustrophobia"),

    protocol("MRI Lumbar Spine WO Contrast", [
        ind("lumbar radiculopathy | {side} L5 radiculopathy | L4-5 radiculopathy | "
            "radicular pain down {side} leg | low back pain with radiculopathy",
            "M54.16 Radiculopathy, lumbar region; M54.17 Radiculopathy, lumbosacral region",
            "failed {6-12} wks conservative tx | positive SLR | foot drop | "
            "numbness lateral calf"),
        ind("sciatica | {side} sciatica | LBP with sciatica | low back pain radiating to leg",
            "M54.30 Sciatica, unspecified side; M54.41 Lumbago with sciatica, right side",
            "no improvement with PT | positive straight leg raise"),
        ind("spinal stenosis | lumbar stenosis | neurogenic claudication | r/o spinal stenosis",
            "M48.062 Spinal stenosis, lumbar region with neurogenic claudication",
            "pain with walking relieved by sitting | shopping cart sign"),
        ind("low back pain with neurologic deficit | LBP with leg weakness | back pain w/ "
            "progressive weakness",
            "M54.50 Low back pain, unspecified; R53.1 Weakness",
            "4/5 EHL | decreased ankle reflex"),
        ind("cauda equina syndrome | r/o cauda equina | c/f CES",
            "G83.4 Cauda equina syndrome",
            "saddle anesthesia | urinary retention | bilateral leg weakness"),
    ], history="DJD | obesity | DM2", meds="on gabapentin | on naproxen | on cyclobenzaprine",
       age=(20, 85), vague="MRI L-spine | MRI lumbar spine | MRI LS spine | MR lumbar | MRI back",
       precise="MRI lumbar spine without contrast | MRI L-spine w/o | MR LS spine noncon",
       negations="prior_spine_surgery pacemaker claustrophobia trauma"),

    protocol("MRI Lumbar Spine W and WO Contrast", [
        ind("discitis | osteomyelitis of spine | r/o discitis-osteomyelitis | "
            "c/f vertebral osteomyelitis",
            "M46.46 Discitis, unspecified, lumbar region; M46.26 Osteomyelitis of vertebra, "
            "lumbar region",
            "fever | ESR {60-120} | CRP {40-200} | blood cx + MSSA"),
        ind("epidural abscess | r/o spinal epidural abscess | c/f epidural abscess",
            "G06.1 Intraspinal abscess and granuloma",
            "IVDU | fever and back pain | new leg weakness | WBC {12.0-22.0}"),
        ind("spinal metastasis | r/o lumbar spine mets | known cancer with new back pain | "
            "eval for vertebral metastases",
            "C79.51 Secondary malignant neoplasm of bone",
            "h/o breast cancer | night pain | weight loss"),
    ], history="IVDU | DM2 | recent bacteremia | breast cancer | prostate cancer",
       labs="ESR {40-120} | CRP {20-200} | WBC {9.0-20.0}",
       age=(25, 85), vague="MRI L-spine | MRI lumbar spine | MRI LS spine w contrast | MRI back",
       precise="MRI lumbar spine with and without contrast | MRI L-spine w/wo | MR LS w+w/o",
       negations="pacemaker"),

    protocol("US Carotid Duplex", [
        ind("carotid bruit | {side} carotid bruit | asymptomatic carotid bruit",
            "R09.89 Other specified symptoms and signs involving the circulatory and "
            "respiratory systems", "bruit on exam | asymptomatic"),
        ind("amaurosis fugax | transient monocular vision loss | TIA, carotid evaluation | "
            "outpatient TIA workup, carotid eval",
            "G45.3 Amaurosis fugax; G45.9 Transient cerebral ischemic attack, unspecified",
            "episode {1-4} wks ago | resolved | no current deficits"),
        ind("carotid stenosis follow-up | f/u known carotid stenosis | surveillance of "
            "50-69% ICA stenosis | s/p CEA follow-up",
            "I65.21 Occlusion and stenosis of right carotid artery; I65.23 Occlusion and "
            "stenosis of bilateral carotid arteries", "annual surveillance"),
    ], history="HTN | HLD | CAD | smoker | PAD", meds="on atorvastatin | on aspirin",
       age=(45, 90), vague="carotid US | carotid doppler | US neck vessels | carotid ultrasound",
       precise="carotid duplex ultrasound | bilateral carotid duplex"),

    protocol("US Thyroid", [
        ind("thyroid nodule | palpable thyroid nodule | incidental thyroid nodule on CT | "
            "thyroid nodule follow-up",
            "E04.1 Nontoxic single thyroid nodule", "1.5 cm nodule on CT | TI-RADS 3 prior"),
        ind("goiter | multinodular goiter | enlarged thyroid",
            "E04.2 Nontoxic multinodular goiter; E04.9 Nontoxic goiter, unspecified",
            "diffusely enlarged | compressive sx"),
        ind("abnormal thyroid function with palpable nodule | hyperthyroid with nodule | "
            "low TSH and nodule",
            "E05.90 Thyrotoxicosis, unspecified without thyrotoxic crisis or storm; "
            "R94.6 Abnormal results of thyroid function studies", "TSH {0.01-0.3}"),
    ], history="family hx thyroid cancer | neck radiation as child", labs="TSH {0.01-6.0}",
       age=(18, 85), vague="US neck | thyroid ultrasound | neck ultrasound | US thyroid/neck",
       precise="thyroid ultrasound | US thyroid gland"),
]

#: Scenarios with no protocol of their own: the modifiers decide (see clinical_knowledge).
STROKE = protocol("scenario:stroke", [
    ind("stroke symptoms | r/o CVA | L sided weakness | R hemiparesis | stroke-like sx | "
        "facial droop and slurred speech | aphasia | c/f ischemic stroke",
        "I63.9 Cerebral infarction, unspecified; R29.810 Facial weakness; "
        "R47.01 Aphasia",
        "NIHSS {4-22} | R arm drift | left gaze deviation | dysarthria | L facial droop"),
], history="HTN | afib not anticoagulated | DM2 | HLD | smoker | prior TIA",
   labs="glucose {95-210} | INR {0.9-1.2} | plt {150-350}K", age=(40, 92),
   vague="stroke imaging | CT head | neuro imaging | stroke workup | code stroke",
   negations="contrast_allergy")
