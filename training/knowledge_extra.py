"""More ways referrers write each protocol's indications: lay terms, abbreviations, eponyms,
lab values, the drug that implies the question, and the imaging already done.

`EXTRA` adds to the tables of knowledge_neuro/_body/_other (appended, so the indication
numbers that `clinical_knowledge.REDIRECTS` refer to stay the same). An entry holds new
indications and more history, labs, medications and exam names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from radproto.training.knowledge_base import Indication, ProtocolKnowledge, alts, ind


@dataclass(frozen=True)
class Extra:
    indications: tuple[Indication, ...] = ()
    history: str = ""
    labs: str = ""
    meds: str = ""
    vague: str = ""
    precise: str = ""


def _x(indications: list[Indication], *, history: str = "", labs: str = "", meds: str = "",
       vague: str = "", precise: str = "") -> Extra:
    return Extra(tuple(indications), history, labs, meds, vague, precise)


EXTRA: dict[str, Extra] = {
    # ------------------------------------------------------------------ head and neck
    "CT Head WO Contrast": _x([
        ind("fell and hit head | slipped on ice, struck head | head bump after fall | "
            "head knock, on blood thinner | found on floor, head lac | syncope with head strike "
            "| GLF with headstrike | mechanical fall, head hit, on Eliquis | fall from bed, "
            "hit head | TBI | concussion, worsening sx | minor head injury, Canadian CT head "
            "rule positive",
            "S06.0X0A Concussion without loss of consciousness, initial encounter",
            "GCS 15 | LOC ~{1-5} min | posterior scalp hematoma | repeated vomiting | "
            "age >65 | on DOAC"),
        ind("sudden worst headache ever | exploded headache, r/o SAH | HA maximal at onset | "
            "sentinel headache | thunderclap HA during sex | severe sudden HA with neck pain",
            "I60.9 Nontraumatic subarachnoid hemorrhage, unspecified",
            "onset <6 h | vomiting | photophobia"),
        ind("new focal deficit, r/o ICH | r/o intracranial bleed | sudden collapse | "
            "acutely altered, r/o bleed | unresponsive, r/o ICH | GCS drop | delirium, fall? | "
            "new confusion in elderly | acute change in mental status | pt found down",
            "R40.20 Unspecified coma; R41.82 Altered mental status, unspecified",
            "GCS {6-13} | pupils equal | glucose normal | BP {150-220}/{80-120}"),
        ind("shunt malfunction | VP shunt, r/o malfunction | hydrocephalus follow-up | "
            "r/o hydrocephalus",
            "G91.9 Hydrocephalus, unspecified; T85.09XA Other mechanical complication of "
            "ventricular intracranial (communicating) shunt, initial encounter",
            "headache and vomiting | lethargy | VP shunt in place"),
        ind("post-op craniotomy check | post EVD placement | f/u known subdural | "
            "interval f/u SDH | repeat head CT for stability of bleed | 6 h repeat CTH",
            "S06.5X0A Traumatic subdural hemorrhage without loss of consciousness, initial "
            "encounter", "known small SDH | stable neuro exam"),
    ], meds="on Eliquis | on Xarelto | on Coumadin | on Plavix | on dabigatran | on enoxaparin",
       labs="INR {2.0-4.5} | plt {20-90}K", vague="CT HEAD | CT brain w/o | head scan | "
       "CT of the head | CT head STAT | NCCT brain", precise="CT head noncontrast | "
       "CT brain without contrast | CT HEAD WO CONTRAST"),
    "CT Head W and WO Contrast": _x([
        ind("ring-enhancing lesion follow-up on antibiotics | cerebral abscess f/u | "
            "toxoplasmosis f/u, HIV | neurocysticercosis follow-up | interval scan of "
            "brain abscess",
            "G06.0 Intracranial abscess and granuloma; B58.2 Toxoplasma meningoencephalitis",
            "on IV abx week {2-6} | on pyrimethamine | fever improving"),
    ], vague="CT head w/wo | CT brain with contrast | CTH with and without",
       precise="CT HEAD W WO CONTRAST | CT head pre and post contrast"),
    "CTA Head and Neck": _x([
        ind("neck pain after chiropractic adjustment with Horner's | r/o dissection after "
            "neck manipulation | sudden neck pain and headache, c/f dissection | "
            "pulsatile tinnitus after trauma",
            "I77.71 Dissection of carotid artery",
            "ptosis and miosis | neck pain | recent yoga injury | roller coaster"),
        ind("Denver criteria positive | blunt cerebrovascular injury screen | BCVI screening | "
            "C-spine fx through transverse foramen",
            "S15.009A Unspecified injury of unspecified carotid artery, initial encounter",
            "high-energy mechanism | Le Fort II fx | basilar skull fx"),
        ind("TIA with carotid territory sx | amaurosis with recurrent episodes, vessels | "
            "vertebrobasilar insufficiency | posterior circulation TIA | "
            "subclavian steal",
            "G45.0 Vertebro-basilar artery syndrome",
            "dizziness and diplopia | transient dysarthria"),
    ], vague="CTA head/neck | CTA H/N | CT angio neck | CTA carotids | CT angio brain",
       precise="CTA HEAD AND NECK | CT angiogram head and neck"),
    "CT Sinus WO Contrast": _x([
        ind("sinus infections keep coming back | blocked nose for months | chronic "
            "sinus problems, failed meds | facial pain and pressure x 3 months | "
            "recurrent acute rhinosinusitis | deviated septum, pre-op | anosmia and "
            "congestion | post-nasal drip, chronic | Samter triad",
            "J32.9 Chronic sinusitis, unspecified; J34.2 Deviated nasal septum",
            "failed INCS | {3-6} episodes/yr | purulent PND | nasal endoscopy: polyps"),
    ], meds="on Flonase | on saline rinses | augmentin x {2-4} courses",
       vague="CT sinuses w/o | sinus CT noncon | CT paranasal sinuses | CT PNS",
       precise="CT SINUS WO CONTRAST | CT paranasal sinuses without contrast | "
       "CT sinus stealth protocol"),
    "CT Maxillofacial WO Contrast": _x([
        ind("hit in face with bat | facial injury, kicked in face | fell onto face | "
            "punched in jaw, can't close mouth | broken nose and cheek swelling | "
            "trauma to orbit, double vision | facial bone fx | Le Fort fx | tripod fracture | "
            "ZMC fracture | nasal bone fx with septal hematoma",
            "S02.40DA Zygomatic fracture, unspecified side, initial encounter for closed "
            "fracture; S02.2XXA Fracture of nasal bones, initial encounter for closed fracture",
            "step-off at orbital rim | trismus | V2 numbness | black eye"),
    ], vague="CT facial bones | CT maxface | CT face w/o | CT orbits noncon | CT mandible",
       precise="CT MAXILLOFACIAL WO CONTRAST | CT facial bones noncontrast"),
    "CT Temporal Bones WO Contrast": _x([
        ind("chronic ear discharge | smelly ear discharge, r/o cholesteatoma | "
            "ear drum retraction pocket | otosclerosis | hearing getting worse, conductive | "
            "pre-op mastoidectomy | ossicular chain eval | superior canal dehiscence | "
            "Tullio phenomenon | chronic otitis media with effusion, surgical planning",
            "H80.90 Unspecified otosclerosis, unspecified ear; H74.8X9 Other specified "
            "disorders of middle ear and mastoid, unspecified ear",
            "air-bone gap {15-40} dB | attic retraction | foul otorrhea"),
    ], vague="CT temporal bone | CT mastoids | CT IACs | CT ear | CT T-bones",
       precise="CT TEMPORAL BONES WO CONTRAST | CT temporal bones noncontrast"),
    "CT Soft Tissue Neck W Contrast": _x([
        ind("lump in neck | swollen gland in neck not going away | neck swelling, fever, "
            "can't swallow | sore throat, drooling, r/o abscess | Ludwig angina | "
            "submandibular swelling after dental infection | parotid mass | "
            "quinsy | neck abscess? | hoarse voice and neck mass | thyroid mass with "
            "airway compression",
            "K12.2 Cellulitis and abscess of mouth; R22.1 Localized swelling, mass and lump, "
            "neck; J36 Peritonsillar abscess",
            "trismus | muffled voice | floor of mouth swelling | WBC {14.0-25.0} | "
            "tooth extraction last week"),
    ], vague="CT neck w contrast | CT neck soft tissue | CT neck with IV | CT face/neck",
       precise="CT SOFT TISSUE NECK W CONTRAST | CT neck with IV contrast"),
    "CT Cervical Spine WO Contrast": _x([
        ind("neck pain after car crash | rear-ended, neck pain | fell down stairs, neck pain | "
            "trauma, c-collar on, clear c-spine | unable to clear c-spine clinically | "
            "intoxicated trauma pt, c-spine | elderly fall, neck pain | whiplash with midline "
            "tenderness | MVA with neck pain",
            "S13.4XXA Sprain of ligaments of cervical spine, initial encounter",
            "midline TTP C5-6 | intoxicated | distracting injury | GCS 14"),
    ], vague="CT C spine | CT neck bones | CT cervical | c-spine CT | CT spine cervical",
       precise="CT CERVICAL SPINE WO CONTRAST | CT c-spine noncontrast"),
    "CT Lumbar Spine WO Contrast": _x([
        ind("back pain after fall from roof | L1 burst fx? | lumbar fx after MVC | "
            "compression fx on x-ray, further characterize | chance fracture? | "
            "pars defect eval, bony detail | pre-op lumbar fusion planning, bony anatomy",
            "S32.001A Wedge compression fracture of unspecified lumbar vertebra, initial "
            "encounter for closed fracture",
            "x-ray: L2 height loss | point tenderness | fell {8-20} ft"),
    ], vague="CT L spine | CT lumbar | CT lower back | CT lumbosacral spine",
       precise="CT LUMBAR SPINE WO CONTRAST | CT L-spine noncontrast"),
    "MRI Brain WO Contrast": _x([
        ind("memory problems | forgetful, getting worse | dementia work-up | "
            "cognitive impairment | Alzheimer's? | confusion over months | early onset "
            "dementia | NPH? gait, incontinence, dementia | rapidly progressive dementia? "
            "(CJD)",
            "G31.84 Mild cognitive impairment of uncertain or known etiology; G91.2 "
            "(Idiopathic) normal pressure hydrocephalus",
            "MMSE {15-25} | SLUMS {14-22} | magnetic gait"),
        ind("dizziness | vertigo, central? | chronic dizziness | imbalance | "
            "episodic vertigo | unsteady gait | ataxia",
            "R42 Dizziness and giddiness; R26.81 Unsteadiness on feet",
            "negative Dix-Hallpike | nystagmus | Romberg +"),
        ind("headaches getting worse | migraine not responding to treatment | headaches "
            "for months | new daily persistent headache | tension HA, r/o structural | "
            "chronic migraine",
            "G44.209 Tension-type headache, unspecified, not intractable; G43.709 Chronic "
            "migraine without aura, not intractable, without status migrainosus",
            "normal fundi | no focal neuro deficits | on amitriptyline"),
        ind("small stroke a few days ago | subacute infarct? | "
            "follow-up of lacunar infarct | syncope vs seizure, structural eval",
            "G45.9 Transient cerebral ischemic attack, unspecified; I63.81 Other cerebral "
            "infarction due to occlusion or stenosis of small artery",
            "resolved | neuro exam normal today | on aspirin"),
        ind("developmental delay | autism, r/o structural | tics | ADHD with headaches | "
            "psychosis first episode, organic cause? | anosmia | Parkinsonism | "
            "tremor eval | movement disorder",
            "F29 Unspecified psychosis not due to a substance or known physiological "
            "condition; G20 Parkinson's disease",
            "first episode | no focal signs | resting tremor"),
    ], meds="on Aricept | on memantine | on Imitrex | on carbidopa-levodopa | on Topamax",
       vague="MRI BRAIN | MR head | MRI of brain | brain MR | MRI head noncon",
       precise="MRI BRAIN WO CONTRAST | MRI brain non-contrast | MRI brain plain"),
    "MRI Brain W and WO Contrast": _x([
        ind("lung cancer, rule out brain mets | melanoma staging brain | breast ca with "
            "headache | known cancer, new neuro sx | SRS planning | mets restaging brain | "
            "glioma follow-up | GBM post-op | post resection tumor f/u | meningioma f/u",
            "C71.9 Malignant neoplasm of brain, unspecified; D32.0 Benign neoplasm of "
            "cerebral meninges",
            "s/p resection | on temozolomide | on Keppra | Decadron started"),
        ind("optic neuritis | numbness and tingling in limbs, r/o MS | demyelination? | "
            "MS relapse | MS annual | NMO? | Lhermitte's | double vision, young woman, MS? | "
            "transverse myelitis workup | MS DMT monitoring",
            "H46.9 Unspecified optic neuritis; G35 Multiple sclerosis",
            "on Ocrevus | on Tecfidera | eye pain with movement | oligoclonal bands"),
        ind("new onset seizure in adult | first fit | breakthrough seizures | epilepsy "
            "protocol | seizure with focal onset | status epilepticus resolved",
            "G40.909 Epilepsy, unspecified, not intractable, without status epilepticus",
            "on levetiracetam | EEG: focal slowing"),
        ind("meningitis with focal signs | encephalitis? HSV | fever and confusion with "
            "seizure | immunocompromised with headache | leptomeningeal disease? | "
            "sarcoid? neuro",
            "G03.9 Meningitis, unspecified; B00.4 Herpesviral encephalitis",
            "LP: lymphocytic pleocytosis | on acyclovir | CD4 {20-150}"),
        ind("papilledema | raised intracranial pressure? | headache worse lying down and "
            "in AM | headache with vomiting, r/o mass | new headache age >50 with cancer hx | "
            "trigeminal neuralgia | cranial nerve palsy | 6th nerve palsy | facial numbness",
            "H47.10 Unspecified papilledema; G50.0 Trigeminal neuralgia",
            "bilateral disc swelling | CN VI palsy | V2 numbness"),
    ], meds="on Keppra | on dexamethasone 4 mg | on Ocrevus | on temozolomide",
       vague="MRI brain w/wo | MRI head with contrast | MR brain gad | MRI brain w and w/o | "
       "MRI brain with gad", precise="MRI BRAIN W WO CONTRAST | MRI brain pre and post gad | "
       "MRI brain tumor protocol | MS protocol MRI brain | MRI brain seizure protocol"),
    "MRI Pituitary W and WO Contrast": _x([
        ind("high prolactin | prolactinoma | milky nipple discharge and missed periods | "
            "amenorrhea-galactorrhea | low testosterone with high prolactin | "
            "peripheral vision loss | pituitary apoplexy? | panhypopituitarism | "
            "diabetes insipidus | central DI | low ACTH | hypogonadotropic hypogonadism | "
            "big hands and feet | tunnel vision",
            "E23.0 Hypopituitarism; E23.2 Diabetes insipidus; N64.3 Galactorrhea not "
            "associated with childbirth",
            "PRL {40-300} ng/mL | IGF-1 elevated | bitemporal field cut | polyuria"),
    ], meds="on cabergoline | on bromocriptine", vague="MRI pituitary | MRI sella turcica | "
       "MR pituitary | MRI brain pituitary", precise="MRI PITUITARY W WO CONTRAST | "
       "MRI sella with and without | dynamic pituitary MRI"),
    "MRI Internal Auditory Canals W and WO Contrast": _x([
        ind("hearing loss in one ear | sudden hearing loss | ringing in one ear | "
            "asymmetric hearing loss on audiogram | acoustic neuroma? | vertigo with "
            "unilateral hearing loss | facial nerve palsy, progressive | hemifacial spasm | "
            "CPA lesion | schwannoma f/u | Meniere's, r/o retrocochlear",
            "H91.21 Sudden idiopathic hearing loss, right ear; H81.09 Meniere's disease, "
            "unspecified ear",
            "asymmetry {15-40} dB at 3 frequencies | WRS {40-70}% | unilateral tinnitus"),
    ], vague="MRI IACs | MRI brain/IAC | MRI posterior fossa | MRI ear | MR IAC",
       precise="MRI IAC W WO CONTRAST | MRI internal auditory canals w/wo gad | "
       "MRI IACs with gadolinium"),
    "MRA Head WO Contrast": _x([
        ind("family history of brain aneurysm | sibling with SAH, screening | ADPKD "
            "aneurysm screen | known aneurysm surveillance | small unruptured aneurysm f/u | "
            "s/p coiling follow-up | post clipping f/u | incidental aneurysm on CT | "
            "moyamoya f/u | intracranial stenosis f/u",
            "I67.1 Cerebral aneurysm, nonruptured; Z86.79 Personal history of other "
            "diseases of the circulatory system",
            "{3-7} mm aneurysm | stable | s/p coiling {1-5} yrs"),
    ], vague="MRA brain | MRA COW | MR angio head | MRA intracranial | MRA",
       precise="MRA HEAD WO CONTRAST | TOF MRA circle of Willis | MRA brain noncontrast"),
    "MRI Cervical Spine WO Contrast": _x([
        ind("pinched nerve in neck | neck pain going down arm | arm tingling and neck pain | "
            "C5-6 disc herniation? | cervical spondylosis with radiculopathy | hand numbness "
            "and clumsiness | dropping things, neck pain | r/o cervical cord compression | "
            "cervical stenosis | neck and shoulder pain with arm weakness",
            "M50.20 Other cervical disc displacement, unspecified cervical region; "
            "M50.121 Cervical disc disorder at C4-C5 level with radiculopathy",
            "+Spurling | +Hoffmann | grip weakness | failed PT and NSAIDs | EMG: C6"),
    ], vague="MRI C spine | MRI neck | MR cervical | MRI cervical | MRI c-spine w/o",
       precise="MRI CERVICAL SPINE WO CONTRAST | MRI C-spine non-contrast"),
    "MRI Thoracic Spine WO Contrast": _x([
        ind("mid back pain with leg weakness | thoracic disc herniation? | T-spine "
            "stenosis | sensory level on exam | upper back pain not improving | "
            "thoracic cord compression? | osteoporotic compression fx, age? | "
            "syrinx f/u | myelopathy, cervical MRI negative",
            "M51.24 Other intervertebral disc displacement, thoracic region; "
            "G95.0 Syringomyelia and syringobulbia",
            "sensory level T{4-12} | brisk reflexes legs | c-spine MRI unremarkable"),
    ], vague="MRI T spine | MRI thoracic | MR thoracic spine | MRI mid back | MRI dorsal spine",
       precise="MRI THORACIC SPINE WO CONTRAST | MRI T-spine non-contrast"),
    "MRI Lumbar Spine WO Contrast": _x([
        ind("back pain shooting down leg | pinched nerve lower back | slipped disc? | "
            "herniated disc | HNP L4-5 | L5-S1 disc herniation | bulging disc | "
            "sciatica not improving after 6 weeks | leg pain and numbness | foot drop | "
            "claudication, vascular studies normal | trouble walking, back pain",
            "M51.26 Other intervertebral disc displacement, lumbar region; M51.16 "
            "Intervertebral disc disorders with radiculopathy, lumbar region",
            "+SLR at {30-60} deg | EHL 4/5 | absent ankle jerk | failed PT x {6-12} wks | "
            "ESI planning"),
        ind("back pain with bladder problems | saddle numbness | urinary retention with "
            "back pain | CES? | bilateral sciatica with incontinence",
            "G83.4 Cauda equina syndrome; R33.9 Retention of urine, unspecified",
            "post-void residual {300-900} mL | reduced anal tone | perianal numbness"),
    ], meds="on Neurontin | on Lyrica | on Flexeril | on meloxicam | s/p prednisone taper",
       vague="MRI LUMBAR | MRI lumbosacral | MRI L/S spine | MRI lower back | MRI LS",
       precise="MRI LUMBAR SPINE WO CONTRAST | MRI L-spine non-contrast | MR L spine plain"),
    "MRI Lumbar Spine W and WO Contrast": _x([
        ind("back pain with fever | IVDU with back pain | back pain and bacteremia | "
            "spinal infection? | MRSA bacteremia with back pain | endocarditis with back pain | "
            "vertebral osteo | discitis f/u | spinal epidural abscess? | "
            "known cancer, new back pain | cord compression? mets | leptomeningeal spread? | "
            "arachnoiditis | intradural mass",
            "M46.26 Osteomyelitis of vertebra, lumbar region; G06.1 Intraspinal abscess and "
            "granuloma; C79.51 Secondary malignant neoplasm of bone",
            "T {38.2-39.5} | ESR {50-120} | CRP {40-250} | blood cultures positive | "
            "h/o prostate ca"),
    ], vague="MRI L spine w/wo | MRI lumbar with contrast | MRI L-spine with gad | "
       "MRI lumbar spine w and w/o", precise="MRI LUMBAR SPINE W WO CONTRAST | "
       "MRI L-spine pre and post gad"),
    "US Carotid Duplex": _x([
        ind("carotid bruit heard | screening carotids | preop CABG carotid screen | "
            "vision loss in one eye that came back | curtain over eye | dizziness, carotids | "
            "s/p carotid endarterectomy f/u | carotid stent f/u | TIA outpatient, carotids | "
            "syncope workup carotids",
            "I65.29 Occlusion and stenosis of unspecified carotid artery; G45.3 Amaurosis "
            "fugax",
            "bruit L neck | resolved in {5-20} min | prior 50-69% stenosis"),
    ], vague="carotid doppler | US carotids | carotid US bilateral | doppler neck | "
       "carotid study", precise="US CAROTID DUPLEX | carotid duplex bilateral"),
    "US Thyroid": _x([
        ind("lump in throat area | swelling front of neck | thyroid nodule on CT | "
            "enlarged thyroid on exam | goitre | thyroid nodule FNA planning | "
            "hyperthyroidism | Graves? | Hashimoto's with nodule | thyroid nodule seen on "
            "carotid US | PET-avid thyroid nodule | TI-RADS 4 f/u | hypothyroid, "
            "enlarged gland",
            "E05.00 Thyrotoxicosis with diffuse goiter without thyrotoxic crisis or storm; "
            "E06.3 Autoimmune thyroiditis",
            "TSH {0.01-8.0} | free T4 {0.7-3.5} | TPO Ab + | 2 cm nodule"),
    ], meds="on levothyroxine | on methimazole | on PTU", vague="US thyroid | neck US | "
       "thyroid US | US soft tissue neck | US neck",
       precise="THYROID ULTRASOUND | US thyroid complete"),
    # ------------------------------------------------------------------ chest and heart
    "CT Chest W Contrast": _x([
        ind("lung mass on x-ray | spot on lung | abnormal chest x-ray, mass | coughing up "
            "blood, smoker | hemoptysis with weight loss | lung ca restaging | "
            "chest wall mass | hilar lymphadenopathy | SVC syndrome? | "
            "persistent pneumonia not clearing | lung abscess? | post-treatment lung cancer "
            "f/u | thymoma? | mesothelioma? | pleural thickening with asbestos",
            "R04.2 Hemoptysis; J85.2 Abscess of lung without pneumonia",
            "CXR: {2-6} cm RUL mass | {20-50} pack-years | wt loss {10-30} lb | "
            "failed 2 courses abx"),
    ], vague="CT chest with IV | CT chest w | CT thorax w/ | chest CT contrast | CT CHEST",
       precise="CT CHEST W CONTRAST | CT chest with IV contrast | CT chest enhanced"),
    "CT Chest WO Contrast": _x([
        ind("lung nodule seen on CT abdomen | incidental pulmonary nodule | nodule f/u "
            "{3-12} months | ground glass nodule f/u | GGO follow-up | subsolid nodule | "
            "Fleischner f/u | nodule seen on cardiac CT | f/u nodules, low risk | "
            "bronchiectasis f/u | f/u pneumonia resolution, noncon",
            "R91.1 Solitary pulmonary nodule; J47.9 Bronchiectasis, uncomplicated",
            "{4-8} mm | part-solid | stable x 1 yr | prior CT {3-12} mo ago"),
    ], vague="CT chest w/o | CT chest noncontrast | CT chest plain | CT chest",
       precise="CT CHEST WO CONTRAST | noncon CT chest | CT chest non-contrast"),
    "CT Chest High Resolution": _x([
        ind("lung scarring? | interstitial changes on CXR | reticular opacities on CXR | "
            "chronic cough with crackles | UIP? | NSIP | hypersensitivity pneumonitis | "
            "bird fancier with dyspnea | sarcoidosis lung f/u | amiodarone lung toxicity? | "
            "methotrexate pneumonitis? | asbestosis | occupational lung disease | "
            "air trapping? | bronchiolitis obliterans | low DLCO | PFTs restrictive",
            "J67.9 Hypersensitivity pneumonitis due to unspecified organic dust; D86.0 "
            "Sarcoidosis of lung; J61 Pneumoconiosis due to asbestos and other mineral fibers",
            "FVC {45-75}% | DLCO {30-60}% | fine inspiratory crackles | digital clubbing"),
    ], meds="on Ofev | on pirfenidone | on Esbriet | on methotrexate", vague="HRCT | "
       "CT chest HR | high res chest CT | CT chest ILD protocol | CT lungs noncon",
       precise="CT CHEST HIGH RESOLUTION | HRCT chest with expiratory images | "
       "CT chest ILD protocol prone"),
    "CTA Chest Pulmonary Embolism": _x([
        ind("SOB and chest pain after long flight | short of breath, leg swelling, r/o clot "
            "in lung | sudden breathlessness post-op | syncope and hypoxia, PE? | "
            "tachycardia unexplained, r/o PE | pleuritic pain and tachycardia | "
            "PE? | Wells high | PERC positive | dd up, SOB | "
            "cancer pt with new dyspnea | DVT on US, now SOB | RV strain on echo",
            "I26.99 Other pulmonary embolism without acute cor pulmonale; R06.02 Shortness "
            "of breath",
            "HR {100-140} | O2 sat {85-93}% | Wells score {4.5-9} | D-dimer {1.0-8.0} | "
            "S1Q3T3 | troponin {0.02-0.3} | RR {22-32}"),
    ], meds="on OCP | on birth control pill | on HRT | on Xeljanz",
       vague="CT chest angio | CTA thorax | CT chest PE | CT angiogram chest | CTA CHEST",
       precise="CTA CHEST PE | CTPA | CT pulmonary angiogram | PE protocol CT | "
       "CTA chest for PE"),
    "CT Chest Low Dose Lung Cancer Screening": _x([
        ind("smoker, lung cancer screen | annual lung screening | LDCT annual | heavy smoker "
            "age 60, screening | shared decision making done, screening | lung-RADS 2 "
            "annual | USPSTF eligible screening | baseline lung screening",
            "Z87.891 Personal history of nicotine dependence; Z12.2 Encounter for screening "
            "for malignant neoplasm of respiratory organs",
            "{20-80} pk-yr | quit {1-14} yrs ago | Lung-RADS 2 last year | no symptoms"),
    ], vague="lung screen | LDCT | low dose chest CT | CT chest screening | CT lung screen",
       precise="CT CHEST LOW DOSE SCREENING | LDCT lung cancer screening | LCS CT"),
    "CTA Aorta Dissection Protocol": _x([
        ind("tearing pain going to back | sudden chest pain to back, dissection? | "
            "ripping chest pain with high BP | aortic dissection? | back pain and unequal "
            "BPs | chest pain with pulse deficit | type A? | type B dissection f/u | "
            "syncope with chest pain and AR murmur | Marfan with chest pain | "
            "post TEVAR f/u | acute aortic syndrome",
            "I71.01 Dissection of thoracic aorta; I71.02 Dissection of abdominal aorta",
            "BP R {160-220} L {110-150} | widened mediastinum on CXR | D-dimer {2.0-10.0} | "
            "new diastolic murmur"),
    ], vague="CTA chest abd pelvis | CT aorta | CTA aorta | CTA C/A/P | CT angio aorta",
       precise="CTA AORTA DISSECTION | CTA chest/abdomen/pelvis dissection protocol | "
       "triple-phase CTA aorta"),
    "CTA Coronary Arteries": _x([
        ind("chest pain, intermediate risk, coronary CT | atypical CP, r/o CAD | chest "
            "tightness with exercise | calcium score and CTA | equivocal stress test | "
            "new LBBB, CAD? | cardiomyopathy, r/o ischemic cause | pre-op valve, coronaries | "
            "bypass graft patency | low-risk chest pain ED, CCTA",
            "I25.10 Atherosclerotic heart disease of native coronary artery without angina "
            "pectoris; R07.89 Other chest pain",
            "HEART score {3-5} | troponin negative x2 | HR {55-65} after metoprolol | "
            "calcium score {0-400}"),
    ], vague="CT coronary | coronary CT angio | cardiac CTA | CT heart with contrast",
       precise="CTA CORONARY | CCTA with calcium score | coronary CTA"),
    "MRI Cardiac W and WO Contrast": _x([
        ind("heart muscle inflammation? | myocarditis after COVID vaccine | troponin leak "
            "with clean coronaries | MINOCA | ARVC? | ARVD evaluation | HCM family "
            "screening | athlete with abnormal ECG | LV non-compaction | amyloid? thick heart | "
            "sarcoid heart | Fabry | iron overload heart | EF low, cause? | syncope with VT",
            "I42.8 Other cardiomyopathies; I21.A1 Myocardial infarction type 2; I47.2 "
            "Ventricular tachycardia",
            "EF {25-45}% | LVH {15-25} mm | troponin {0.1-5.0} | normal angiogram | "
            "T wave inversions"),
    ], vague="cardiac MRI | MRI heart w contrast | CMR | heart MRI w/wo",
       precise="MRI CARDIAC W WO CONTRAST | cardiac MRI with gadolinium | CMR LGE"),
    "XR Chest 2 Views": _x([
        ind("cough for 3 weeks | cough and cold not going away | chest cold | bronchitis? | "
            "wheezing | chest infection? | fever and cough | SOB, CHF? | CHF exacerbation | "
            "fluid on lungs? | pleural effusion f/u | pneumothorax f/u | post-op chest | "
            "rib pain after fall | TB screening | positive PPD | positive QuantiFERON | "
            "immigration CXR | pre-employment | line placement check | rib fracture?",
            "J20.9 Acute bronchitis, unspecified; I50.9 Heart failure, unspecified; R76.11 "
            "Nonspecific reaction to tuberculin skin test without active tuberculosis",
            "crackles | decreased breath sounds R base | T {37.8-39.4} | SpO2 {90-97}% | "
            "PPD {10-20} mm"),
    ], vague="chest xray | chest x ray | CXR PA/LAT | XR CHEST | CXR 2v | chest radiograph | "
       "x-ray chest", precise="XR CHEST 2 VIEWS | CXR PA and lateral | chest PA + lat"),
    # ------------------------------------------------------------------ abdomen and pelvis
    "CT Abdomen Pelvis W Contrast": _x([
        ind("belly pain and fever | stomach pain, vomiting | abdo pain ?cause | abdominal "
            "pain with raised inflammatory markers | tender RIF, appendix? | appy? | "
            "diverticulitis flare | LIF pain and fever | can't pass gas, distended | "
            "SBO? | perforation? | free air? | pancreatitis complications | "
            "necrotizing pancreatitis? | post-op leak? | anastomotic leak | "
            "weight loss, ? occult malignancy | unexplained weight loss, CT CAP | "
            "colitis? | fever of unknown origin | sepsis, source? | "
            "incarcerated hernia? | ovarian ca staging | renal mass "
            "staging | kidney cancer follow-up | RCC surveillance",
            "K65.0 Generalized (acute) peritonitis; K85.90 Acute pancreatitis without "
            "necrosis or infection, unspecified; R50.9 Fever, unspecified",
            "rebound | peritonitic | WBC {12.0-24.0} | CRP {50-300} | lactate {1.5-4.0} | "
            "lipase {200-3000} | tachycardic | Alvarado {6-9}"),
    ], meds="on Augmentin | on cipro/flagyl | on morphine", vague="CT abd/pel | CT A/P | "
       "CT abdomen/pelvis | CT ABDOMEN PELVIS | CT abd pelvis w contrast | CAT scan belly | "
       "CT AP | CT tummy", precise="CT ABDOMEN PELVIS W CONTRAST | CT abd/pelvis with IV "
       "contrast | CT A/P w/ | CTAP portal venous"),
    "CT Abdomen W Contrast": _x([
        ind("liver injury f/u | splenic lac f/u | spleen injury after fall, repeat | "
            "drop in Hb after liver biopsy | post-procedure bleed, upper abdomen | "
            "hematoma after kidney biopsy | upper abdominal wall mass | "
            "liver abscess f/u | hepatic abscess drainage f/u",
            "S36.039A Unspecified laceration of spleen, initial encounter; K75.0 Abscess of "
            "liver",
            "Hb {7.0-10.0} from {11.0-13.5} | LUQ tenderness | grade {2-4} injury"),
    ], vague="CT abdomen w | CT upper abdomen | CT abd with IV | CT abdomen only",
       precise="CT ABDOMEN W CONTRAST | CT abdomen with IV contrast (no pelvis)"),
    "CT Renal Stone Protocol": _x([
        ind("kidney stone pain | kidney stones? | loin to groin pain | colicky loin pain | "
            "renal colic, ? stone | flank pain and blood in urine | pain in side going to "
            "groin | stone? | ureteric colic | known stone, recurrent colic | "
            "hematuria with flank pain | obstructing stone?",
            "N20.2 Calculus of kidney with calculus of ureter; N13.2 Hydronephrosis with "
            "renal and ureteral calculous obstruction",
            "can't get comfortable | microscopic hematuria | UA {20-100} RBC | "
            "CVAT | vomiting"),
    ], meds="on Flomax | on Toradol | on oxycodone", vague="CT KUB | CT abd/pel noncon | "
       "CT A/P w/o | CT stone | CT kidneys | CT urinary tract noncontrast",
       precise="CT STONE PROTOCOL | CT KUB low dose | CT renal stone study | CT A/P WO stone"),
    "CT Urography": _x([
        ind("painless blood in urine | visible hematuria, no pain, smoker | haematuria "
            "workup | bladder cancer hx surveillance | upper tract TCC? | filling defect "
            "in ureter | positive urine cytology | hematuria protocol | urothelial ca f/u | "
            "s/p cystectomy surveillance | s/p nephroureterectomy f/u",
            "R31.0 Gross hematuria; C66.9 Malignant neoplasm of unspecified ureter",
            "atypical cytology | cysto: no bladder lesion | smoker {20-50} pk-yr"),
    ], vague="CT urogram | CT abd/pelvis w/wo | CT A/P hematuria | CT kidneys w/wo | CT IVP",
       precise="CT UROGRAPHY | CTU triple phase | CT urogram hematuria protocol"),
    "CT Liver Multiphase": _x([
        ind("liver lesion in cirrhotic | HCC? | liver nodule on US, cirrhosis | "
            "hepatitis B, liver mass? | rising AFP | LI-RADS f/u | LR-4 follow up | "
            "HCC post-TACE | post Y90 | transplant eval liver",
            "C22.0 Liver cell carcinoma; K76.89 Other specified diseases of liver",
            "AFP {20-2000} ng/mL | nodule {1.0-4.0} cm on US | Child-Pugh {5-8} | MELD {8-25}"),
    ], vague="CT liver w/wo | CT abdomen liver protocol | CT liver triple phase | CT liver",
       precise="CT LIVER MULTIPHASE | CT liver 3-phase | CT liver arterial/portal/delayed"),
    "CT Pancreas Protocol": _x([
        ind("yellow skin and weight loss | painless jaundice, mass? | pancreatic head mass? | "
            "pancreas cancer? | rising CA 19-9 | pancreatic cyst on MRI | IPMN surveillance | "
            "Whipple planning | pancreatic NET | neuroendocrine tumor pancreas | "
            "new diabetes with weight loss, age 70 | dilated pancreatic duct on US | "
            "post-Whipple surveillance",
            "C25.9 Malignant neoplasm of pancreas, unspecified; K86.2 Cyst of pancreas",
            "CA19-9 {40-3000} | bili {3.0-20.0} | double duct sign | PD {4-9} mm"),
    ], vague="CT pancreas | CT abdomen pancreas | CT abd pancreatic | CT pancreatic protocol",
       precise="CT PANCREAS PROTOCOL | CT pancreas biphasic | pancreas mass protocol CT"),
    "CT Adrenal Protocol": _x([
        ind("adrenal nodule on CT | adrenal lump | adrenal adenoma? | incidental adrenal "
            "lesion, characterize | adrenal mass washout | hypertension and low potassium, "
            "adrenal? | Conn's? | primary aldosteronism | Cushing's adrenal? | "
            "pheochromocytoma? | adrenal mass in cancer patient",
            "E26.01 Conn's syndrome; E27.5 Adrenomedullary hyperfunction; D35.00 Benign "
            "neoplasm of unspecified adrenal gland",
            "K {2.8-3.4} | aldosterone/renin ratio {30-80} | {1.5-4.0} cm | "
            "{10-35} HU"),
    ], vague="CT adrenal | CT adrenal glands | CT abdomen adrenal | adrenal CT w/wo",
       precise="CT ADRENAL PROTOCOL | CT adrenal washout | adrenal protocol CT w/wo"),
    "CTA Abdomen Pelvis": _x([
        ind("bleeding from back passage, hypotensive | bright red blood per rectum, active | "
            "massive GI bleed | lower GI bleed, localize | melena with Hb drop, source? | "
            "belly pain out of proportion, afib | gut ischemia? | bowel ischemia? | "
            "AAA growing | AAA {4.5-6.5} cm surveillance | EVAR f/u, endoleak? | "
            "ruptured AAA? | renal artery stenosis? | mesenteric angina | "
            "retroperitoneal bleed | post-op bleed",
            "K92.1 Melena; K55.1 Chronic vascular disorders of intestine; I71.3 Abdominal "
            "aortic aneurysm, ruptured",
            "Hb {5.5-9.0} | {2-6} units PRBC | lactate {2.0-8.0} | BP {70-95}/{40-60} | "
            "pulsatile mass"),
    ], vague="CTA A/P | CT angio abdomen | CTA abd/pel | CT abd/pelvis angiogram | "
       "GI bleed CT", precise="CTA ABDOMEN PELVIS | CT angiogram abd/pelvis | "
       "CTA GI bleed protocol | CTA mesenteric"),
    "CT Enterography": _x([
        ind("Crohn's flare | IBD, small bowel eval | terminal ileum thickening | "
            "Crohn's stricture? | perianal Crohn's with small bowel sx | chronic diarrhea "
            "and weight loss, IBD? | celiac refractory | small bowel tumor? | "
            "anaemia, small bowel bleed? | capsule endoscopy finding f/u | "
            "IBD treatment response",
            "K50.80 Crohn's disease of both small and large intestine without complications; "
            "K63.89 Other specified diseases of intestine",
            "calprotectin {200-2000} | CRP {10-120} | on Humira | on Stelara | on Entyvio"),
    ], meds="on Humira | on Remicade | on Stelara | on Entyvio | on azathioprine",
       vague="CT enterography | CT small bowel | CTE abdomen | CT A/P enterography",
       precise="CT ENTEROGRAPHY | CTE with neutral oral contrast"),
    "CT Colonography": _x([
        ind("screening colon, declines colonoscopy | CTC screening | virtual colonoscopy | "
            "incomplete scope | colonoscopy couldn't reach cecum | colon screening, "
            "anticoagulated | FIT positive, colonoscopy not possible | "
            "colonoscopy high risk (frail)",
            "Z12.11 Encounter for screening for malignant neoplasm of colon; R19.5 Other "
            "fecal abnormalities",
            "declines OC | tortuous colon | FIT +"),
    ], vague="virtual colonoscopy | CT colon | CTC | CT colonogram",
       precise="CT COLONOGRAPHY | CT virtual colonoscopy screening"),
    "MRI Abdomen W and WO Contrast": _x([
        ind("liver lesion, indeterminate on CT | liver spot, hemangioma? | FNH vs adenoma | "
            "liver lesion MRI characterization | complex kidney cyst | Bosniak 2F | "
            "Bosniak 3 | renal mass, iodinated contrast allergy | "
            "liver iron? | LI-RADS MRI | liver mets? MRI",
            "K76.89 Other specified diseases of liver; N28.1 Cyst of kidney, acquired",
            "{0.8-3.0} cm lesion | indeterminate on CT | enhancing septations"),
    ], vague="MRI abdomen w/wo | MRI liver w contrast | MR abdomen gad | MRI kidneys | "
       "MRI abd", precise="MRI ABDOMEN W WO CONTRAST | MRI abdomen with and without gad | "
       "MRI liver Eovist"),
    "MRCP": _x([
        ind("bile duct stone? | CBD stone | dilated CBD | LFTs up post cholecystectomy | "
            "jaundice, stone? | gallstone pancreatitis, duct? | biliary dilatation on US | "
            "PSC? | sclerosing cholangitis | biliary stricture | cholangiocarcinoma? | "
            "pancreas divisum | recurrent pancreatitis cause | choledochal cyst | "
            "post-cholecystectomy pain | ERCP planning",
            "K80.51 Calculus of bile duct without cholangitis or cholecystitis with "
            "obstruction; K85.10 Biliary acute pancreatitis without necrosis or infection",
            "CBD {7-14} mm | ALP {200-800} | GGT {150-900} | bili {1.5-8.0} | "
            "lipase {300-3000}"),
    ], vague="MRCP | MRI biliary | MR cholangiogram | MRI pancreas/biliary | MRI abdomen MRCP",
       precise="MRCP | MRI MRCP without contrast | MR cholangiopancreatogram"),
    "MRI Prostate Multiparametric": _x([
        ind("raised PSA | high PSA | PSA going up | PSA {4.0-30.0} | PSA velocity up | "
            "abnormal DRE | prostate nodule on DRE | hard prostate | prostate ca? | "
            "pre-biopsy MRI | fusion biopsy planning | active surveillance MRI | "
            "biochemical recurrence after prostatectomy | PIRADS f/u",
            "R97.20 Elevated prostate specific antigen [PSA]; N40.1 Benign prostatic "
            "hyperplasia with lower urinary tract symptoms",
            "PSA {4.0-30.0} ng/mL | free PSA {8-15}% | firm nodule R lobe | "
            "negative TRUS biopsy"),
    ], vague="MRI prostate | MR prostate | prostate MRI w/wo | MRI pelvis prostate",
       precise="MRI PROSTATE MULTIPARAMETRIC | mpMRI prostate | PIRADS MRI prostate"),
    "MRI Pelvis W and WO Contrast": _x([
        ind("fibroids, planning | uterine fibroids mapping | adenomyosis? | deep "
            "endometriosis mapping | endometrioma? | ovarian mass indeterminate on US | "
            "complex adnexal cyst | adnexal mass, US equivocal | cervical ca staging | "
            "endometrial ca staging | rectal ca MRI | perianal fistula | fistula-in-ano | "
            "perianal abscess Crohn's | Mullerian anomaly | sarcoma pelvis",
            "N80.0 Endometriosis of uterus; K60.3 Anal fistula; N83.209 Unspecified "
            "ovarian cyst, unspecified side",
            "US: {4-12} cm complex cyst, indeterminate | CA-125 {35-250} | "
            "fibroid uterus {12-20} wk size | Crohn's | seton in place"),
    ], vague="MRI pelvis w/wo | MR pelvis gad | pelvic MRI with contrast | MRI pelvis",
       precise="MRI PELVIS W WO CONTRAST | MRI pelvis with and without contrast | "
       "MRI rectal cancer protocol | MRI perianal fistula protocol"),
    "US Abdomen Right Upper Quadrant": _x([
        ind("pain under right ribs after fatty food | gallbladder attack? | gallbladder "
            "stones? | biliary colic? | RUQ pain, Murphy's + | cholecystitis? | "
            "epigastric pain after eating | "
            "LFTs deranged | raised ALT | deranged LFTs | "
            "fatty liver? | hepatomegaly | ascites? | elevated bilirubin | "
            "pancreatitis, gallstones?",
            "K80.10 Calculus of gallbladder with chronic cholecystitis without obstruction; "
            "R94.5 Abnormal results of liver function studies; R18.8 Other ascites",
            "Murphy's positive | ALT {60-400} U/L | ALP {120-400} | bili {1.2-4.0} | "
            "lipase {40-900}"),
    ], vague="US RUQ | US abdomen | abdo US | ultrasound abdomen | US liver/GB | "
       "US gallbladder | ABD US LTD", precise="US ABDOMEN RUQ | RUQ US | "
       "US abdomen limited RUQ | US liver gallbladder"),
    "US Renal": _x([
        ind("kidney function worse | creatinine up | AKI? | AKI on CKD | oliguria | "
            "kidney ultrasound for CKD | renal impairment, ? obstruction | "
            "hydro? | kidneys swollen? | febrile UTI | pyelonephritis not improving | "
            "renal transplant dysfunction | transplant kidney US | renal cyst f/u | "
            "hypertension young, renal cause? | urinary retention, upper tracts | "
            "ADPKD f/u",
            "N17.9 Acute kidney failure, unspecified; N18.5 Chronic kidney disease, stage 5; "
            "N28.1 Cyst of kidney, acquired",
            "Cr {1.5-6.0} | baseline Cr {0.8-1.3} | UO {10-25} mL/h | PVR {200-900} mL"),
        ind("flank pain in pregnancy | pregnant with loin pain, hydro? | kidney stone? "
            "pregnant {14-34} wks | pyelonephritis in pregnancy",
            "O23.00 Infections of kidney in pregnancy, unspecified trimester; "
            "O26.89 Other specified pregnancy related conditions",
            "fever | CVA tenderness | hematuria on UA", sex="female", age=(18, 42)),
    ], vague="US kidneys | renal US | US renal/bladder | kidney scan US | US KUB | "
       "renal ultrasound", precise="US RENAL | US kidneys and bladder complete | "
       "renal and bladder ultrasound"),
    "US Pelvis Transabdominal and Transvaginal": _x([
        ind("lower tummy pain, woman | pelvic pain, hCG negative | heavy periods | "
            "bleeding between periods | irregular bleeding | period pain severe | "
            "fibroids? | PCOS? | ovarian cyst? | IUD position check | lost IUD strings | "
            "postmenopausal bleeding on HRT | thickened endometrium f/u | "
            "adnexal mass on exam | pelvic mass | infertility workup | torsion? | "
            "PID, TOA?",
            "N92.0 Excessive and frequent menstruation with regular cycle; E28.2 Polycystic "
            "ovarian syndrome; T83.32XA Displacement of intrauterine contraceptive device, "
            "initial encounter",
            "hCG neg | LMP {1-5} wks ago | Hb {8.5-12.5} | IUD placed {1-5} yrs ago | "
            "endometrium {5-14} mm"),
    ], vague="US pelvis | TVUS | pelvic US TA/TV | transvaginal ultrasound | gyn US | "
       "US pelvic", precise="US PELVIS TA TV | pelvic ultrasound transabdominal and "
       "transvaginal | US pelvis complete"),
    "US Obstetric First Trimester": _x([
        ind("pregnant, bleeding | spotting, pregnant {5-12} weeks | positive pregnancy "
            "test, pain | early pregnancy, cramping | ?ectopic | PUL | pregnancy of unknown "
            "location | viability scan | dating scan | first trimester scan | "
            "miscarriage? | hyperemesis gravidarum | hCG rising inappropriately | "
            "IVF pregnancy early scan | molar pregnancy?",
            "O21.0 Mild hyperemesis gravidarum; O03.9 Complete or unspecified spontaneous "
            "abortion without complication",
            "beta hCG {1000-90000} | LMP {5-12} wks | G{1-5}P{0-3} | "
            "closed os | cramping"),
    ], vague="OB US | early pregnancy scan | US pregnancy | OB ultrasound <14 wk | "
       "US pelvis OB", precise="US OB FIRST TRIMESTER | OB US <14 weeks | "
       "first trimester ultrasound"),
    "US Lower Extremity Venous Duplex": _x([
        ind("swollen painful calf | leg swollen after flight | leg clot? | DVT? | "
            "red hot swollen leg | calf swelling after surgery | leg swelling, on OCP | "
            "leg pain and swelling, Wells 2 | post-op DVT screen | superficial "
            "thrombophlebitis, extension? | Baker's cyst? | phlegmasia?",
            "I80.3 Phlebitis and thrombophlebitis of lower extremities, unspecified; "
            "M71.20 Synovial cyst of popliteal space [Baker], unspecified knee",
            "calf circumference +{2-5} cm | pitting edema | D-dimer {0.6-4.0} | "
            "Wells {1-5}"),
    ], vague="LE doppler | leg doppler | venous US leg | DVT US | doppler LLE | doppler RLE | "
       "US venous lower extremity", precise="US LOWER EXTREMITY VENOUS DUPLEX | "
       "venous duplex lower extremity | LE venous doppler bilateral"),
    "US Scrotum": _x([
        ind("testicle pain | sore testicle | balls swollen | lump in testicle | "
            "testicular swelling | torsion? | hydrocele? | varicocele | epididymo-orchitis? | "
            "undescended testis | scrotal swelling after trauma | testicular ca?",
            "N43.3 Hydrocele, unspecified; I86.1 Scrotal varices",
            "onset {1-24} h | cremasteric reflex absent | painless lump {1-3} cm | "
            "transilluminates"),
    ], vague="US testicles | testicular ultrasound | US scrotal | US testis doppler",
       precise="US SCROTUM | scrotal US with doppler"),
    "NM Lung Ventilation Perfusion": _x([
        ind("pulmonary hypertension, CTEPH? | persistent SOB after PE | chronic PE? | "
            "pre-lung resection perfusion | quantitative lung perfusion | split lung function",
            "I27.24 Chronic thromboembolic pulmonary hypertension",
            "RVSP {45-90} | PE {3-12} months ago on anticoagulation | FEV1 {0.9-1.6} L"),
    ], vague="VQ scan | V/Q | lung perfusion scan | nuclear lung | VQ lung",
       precise="NM LUNG VENTILATION PERFUSION | V/Q scan | ventilation perfusion scintigraphy"),
    "NM Hepatobiliary HIDA": _x([
        ind("RUQ pain, ultrasound negative | US equivocal, cholecystitis? | gallbladder not "
            "working? | GB ejection fraction | biliary dyskinesia | acalculous cholecystitis "
            "in ICU | bile leak post lap chole | sphincter of Oddi dysfunction | "
            "biliary atresia? | chronic cholecystitis? normal US | "
            "US: sludge, no wall thickening, still pain",
            "K82.8 Other specified diseases of gallbladder; K81.1 Chronic cholecystitis",
            "US equivocal | recurrent RUQ pain | CCK | GBEF?"),
    ], vague="HIDA scan | NM HIDA | hepatobiliary scan | gallbladder scan nuclear | "
       "NM gallbladder with CCK", precise="NM HEPATOBILIARY HIDA | HIDA with CCK | "
       "hepatobiliary scintigraphy with EF"),
    "NM Bone Scan Whole Body": _x([
        ind("prostate cancer staging bones | bone mets? | breast ca with back pain | "
            "bone pain, high ALP, cancer | skeletal survey for mets | Paget disease | "
            "stress fracture? runner | osteomyelitis? 3-phase | CRPS? | "
            "loose hip prosthesis? | occult hip fracture, MRI contraindicated",
            "M88.9 Osteitis deformans of unspecified bone; M86.9 Osteomyelitis, unspecified; "
            "G90.50 Complex regional pain syndrome I, unspecified",
            "PSA {20-300} | ALP {150-800} | Gleason {8-10} | x-rays negative"),
    ], vague="bone scan | NM bone whole body | nuclear bone scan | total body bone scan | "
       "Tc99 bone scan", precise="NM BONE SCAN WHOLE BODY | whole body bone scintigraphy"),
    "PET CT FDG Skull Base to Mid Thigh": _x([
        ind("lymphoma staging PET | Hodgkin's interim PET | DLBCL end of treatment | "
            "lung nodule PET | SPN PET | esophageal ca staging PET | "
            "head and neck ca post-treatment PET | melanoma staging PET | "
            "cancer of unknown primary | CUP | FUO, PET | restaging after chemo | "
            "rising CEA, PET | myeloma PET | sarcoidosis activity PET | Deauville",
            "C80.1 Malignant (primary) neoplasm, unspecified; C90.00 Multiple myeloma not "
            "having achieved remission",
            "after C{2-6} | SUV prior {4-20} | CEA {5-80} | glucose {80-180} mg/dL"),
    ], vague="PET scan | PET/CT whole body | FDG PET | PETCT | PET CT",
       precise="PET CT FDG SKULL BASE TO MID THIGH | FDG PET/CT eyes to thighs | "
       "PET/CT skull base to thigh"),
    "MRI Knee WO Contrast": _x([
        ind("twisted knee playing football | knee gave way | knee locking | knee swelling "
            "after injury | knee pain after sports injury | torn ligament? | torn cartilage? | "
            "ACL? | meniscus? | MCL tear | PCL injury | knee pain, XR normal | "
            "bone bruise? | osteochondral lesion | patellar dislocation | "
            "OCD lesion | SONK? | chronic knee pain, failed PT",
            "S83.411A Sprain of medial collateral ligament of right knee, initial encounter; "
            "M23.200 Derangement of unspecified meniscus due to old tear or injury",
            "+anterior drawer | effusion | +Lachman | locking episodes | XR: negative"),
    ], vague="MRI knee w/o | MR knee | MRI left knee | MRI right knee | MRI KNEE",
       precise="MRI KNEE WO CONTRAST | MRI knee non-contrast"),
    "MRI Shoulder WO Contrast": _x([
        ind("shoulder pain, can't lift arm | rotator cuff? | RC tear? | shoulder pain at "
            "night | frozen shoulder? | adhesive capsulitis | shoulder pain after fall, "
            "weakness | biceps tendon tear | AC joint pain | calcific tendinitis | "
            "subacromial bursitis | failed injection, shoulder pain",
            "M75.00 Adhesive capsulitis of unspecified shoulder; M75.21 Bicipital "
            "tendinitis, right shoulder",
            "+empty can | weak abduction | painful arc | failed PT {6-12} wks | "
            "XR: AC arthrosis"),
    ], vague="MRI shoulder w/o | MR shoulder | MRI R shoulder | MRI L shoulder | MRI SHOULDER",
       precise="MRI SHOULDER WO CONTRAST | MRI shoulder non-contrast"),
    "MR Arthrogram Shoulder": _x([
        ind("shoulder keeps dislocating | labrum tear? | labral tear young athlete | "
            "clicking shoulder, thrower | shoulder instability | Bankart? | Hill-Sachs | "
            "post-op labral repair, re-tear? | SLAP? | posterior instability",
            "S43.006A Unspecified dislocation of unspecified shoulder joint, initial "
            "encounter; M24.419 Recurrent dislocation, unspecified shoulder",
            "+apprehension | +relocation | baseball pitcher | {2-6} dislocations | "
            "volleyball"),
    ], vague="MR arthrogram | MRI shoulder arthrogram | shoulder MRA | arthrogram shoulder",
       precise="MR ARTHROGRAM SHOULDER | shoulder MR arthrography with intra-articular "
       "gadolinium"),
    "MRI Breast W and WO Contrast": _x([
        ind("BRCA positive screening | strong family history breast cancer, MRI screen | "
            "high risk, Tyrer-Cuzick {20-45}% | new breast cancer extent | "
            "lobular carcinoma, extent | neoadjuvant chemo response | breast implant "
            "leak? | silicone rupture? | occult primary, axillary node positive | "
            "nipple discharge, bloody, negative mammo | problem solving breast MRI",
            "Z15.01 Genetic susceptibility to malignant neoplasm of breast; C50.912 "
            "Malignant neoplasm of unspecified site of left female breast",
            "BRCA1 | BRCA2 | Tyrer-Cuzick {20-45}% | biopsy: ILC | "
            "mantle radiation for Hodgkin"),
    ], vague="MRI breast | breast MRI bilateral | MRI breasts w/wo | MR breast",
       precise="MRI BREAST W WO CONTRAST | bilateral breast MRI with gadolinium"),
}


def extend(base: ProtocolKnowledge, extra: Extra | None) -> ProtocolKnowledge:
    """The knowledge with the extra indications appended and the pools widened."""
    if extra is None:
        return base
    return replace(
        base, indications=base.indications + extra.indications,
        history=base.history + alts(extra.history), labs=base.labs + alts(extra.labs),
        meds=base.meds + alts(extra.meds), vague_exams=base.vague_exams + alts(extra.vague),
        precise_exams=base.precise_exams + alts(extra.precise))


# More ways each modifier is written (evidence) and denied (negations), keyed like MODIFIERS.
MODIFIER_TEXT: dict[str, tuple[str, str]] = {
    "contrast_allergy": (
        "ALLERGY: IODINE CONTRAST - ANAPHYLAXIS | contrast allergy - intubated after CT "
        "contrast | prior contrast reaction with bronchospasm and hypotension | anaphylactic "
        "to CT dye, reacted despite premedication | severe allergic reaction to x-ray dye | "
        "allergic to contrast (anaphylaxis, ICU) | contrast allergy: angioedema and stridor",
        "iodine allergy (shellfish) only | contrast allergy: mild itching, premedicated | "
        "allergies: penicillin, latex | allergic to morphine (itch) | NKA | no known "
        "allergies | allergy: codeine | mild rash with contrast years ago, premedicate | "
        "prior CT with contrast without issue | allergies: nil known"),
    "renal_failure": (
        "on dialysis | HD Tue/Thu/Sat | ESKD on HD via L AV fistula | CKD 5, not on dialysis, "
        "eGFR {8-14} | creatinine {3.5-7.0}, eGFR {7-20} | renal failure, eGFR {10-25} | "
        "CKD4 (eGFR {18-29}) | ESRF on PD | kidney transplant with failing graft, eGFR {12-24}",
        "eGFR >90 | U&E normal | kidney function OK | BMP normal | creat {0.6-1.0}"),
    "pregnancy": (
        "{20-36}/40 pregnant | G{2-4}P{1-2} {14-34}wks | pt is pregnant ({16-35} weeks) | "
        "currently {12-30} wks gestation | pregnant (EDD in {6-24} wks) | pregnant, 3rd "
        "trimester",
        "UPT neg | bHCG negative | LMP {3-25} days ago, hCG neg"),
    "normal_cxr": (
        "chest x-ray: no acute findings | CXR NAD | clear lungs on CXR | normal CXR this AM",
        ""),
    "abnormal_cxr": (
        "CXR: LLL consolidation | CXR abnormal - effusion and atelectasis | CXR with patchy "
        "airspace disease", ""),
    "pacemaker": (
        "cochlear implant, not MRI compatible | metallic foreign body in eye (welder), MRI "
        "contraindicated | old cerebral aneurysm clip, MR unsafe | spinal cord stimulator, "
        "not MRI conditional | PPM - non-conditional | MRI unsafe device (ICD) | ICD in situ, "
        "not MR conditional | non-MR-safe neurostimulator | pacemaker dependent, "
        "non-MRI compatible device",
        "MRI safety form done, no contraindications | no metal in body | MRI checklist "
        "cleared | no implants | hip replacement (MRI safe) | MR-conditional ICD, "
        "cardiology aware"),
    "claustrophobia": (
        "panics in MRI scanner, refused last 2 attempts | too claustrophobic for MRI, "
        "declines sedation | aborted MRI x2 (claustrophobia), no GA available | extreme "
        "claustrophobia - will not go in the tube",
        "mildly claustrophobic, ativan prior | anxious but has done MRI before | "
        "claustrophobia: no"),
    "prior_spine_surgery": (
        "previous L5/S1 discectomy {1-8} yrs ago, pain back | s/p TLIF L4-5, new leg pain | "
        "post-op spine, recurrent disc vs scar | lumbar fusion {2012-2023}, recurrent "
        "sciatica | s/p microdiscectomy {3-18} months ago, same leg pain again | previous "
        "lumbar laminectomy, symptoms returned",
        "no previous spinal operations | native spine, no surgery"),
    "stroke_acute": (
        "within tPA window | sudden onset {20-90} mins ago | LKW {1-3} hrs, candidate for lysis "
        "| acute onset at {1-3}pm today, now in ED | stroke alert, onset {30-180} min | "
        "thrombectomy candidate, onset {1-4} h", ""),
    "stroke_extended": (
        "unknown onset time, woke with deficit | LKW yesterday evening | symptoms on waking, "
        "LKW {8-12} h | outside lysis window, LKW {6-20}h, salvageable tissue?", ""),
    "stroke_remote": (
        "symptoms since last week | onset {2-5} days ago, stable | presenting {3-10} days "
        "after onset | gradual over {1-3} weeks", ""),
    "hematuria_painless": (
        "no loin pain | otherwise asymptomatic | no abdominal or flank pain | painless, smoker",
        ""),
    "hematuria_painful": (
        "with {side} loin to groin pain | with colicky pain | and severe {side} side pain | "
        "with writhing flank pain", ""),
}

# Words that show an indication is about an injury, so "denies trauma" cannot go with it.
TRAUMA_WORDS = (r"concuss|\bTBI\b|strike|knock|bump|slipped|kicked|\bbat\b|crash|rear-ended|"
                r"\bMVA\b|whiplash|sports|football|playing|\bGLF\b|roof|stairs|bruise|BCVI|"
                r"Denver|collision|broken|Le Fort|tripod|ZMC|found on floor|found down|SDH|"
                r"subdural|lac\b")
