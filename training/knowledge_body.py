"""Clinical knowledge: chest, heart, abdomen and pelvis protocols (and the hematuria scenario)."""

from __future__ import annotations

from radproto.training.knowledge_base import ind, protocol

BODY = [
    protocol("CT Chest W Contrast", [
        ind("lung mass | RUL mass on CXR | new lung mass | r/o lung mass | "
            "mass on chest x-ray, further eval",
            "R91.8 Other nonspecific abnormal finding of lung field",
            "4 cm mass on CXR | hemoptysis | 20 lb weight loss"),
        ind("lung cancer staging | staging NSCLC | new lung adenocarcinoma, staging | "
            "lung ca restaging",
            "C34.90 Malignant neoplasm of unspecified part of unspecified bronchus or lung",
            "biopsy-proven adenocarcinoma | post cycle {2-6} chemo"),
        ind("empyema | r/o empyema | c/f complicated parapneumonic effusion | loculated "
            "pleural effusion",
            "J86.9 Pyothorax without fistula",
            "fever despite abx | pleural fluid pH 7.1 | large effusion on CXR"),
        ind("mediastinal mass | widened mediastinum on CXR | anterior mediastinal mass",
            "J98.59 Other diseases of mediastinum, not elsewhere classified",
            "incidental on CXR | chest pressure"),
        ind("lymphoma follow-up | f/u lymphoma | DLBCL surveillance | Hodgkin lymphoma f/u",
            "C85.90 Non-Hodgkin lymphoma, unspecified, unspecified site",
            "completed R-CHOP | on surveillance"),
    ], history="smoker {20-60} pack-years | COPD | prior lung cancer | asbestos exposure",
       labs="Cr {0.6-1.2} | eGFR {60-110}", age=(30, 88),
       vague="CT chest | chest CT | CT thorax | CT chest with contrast",
       precise="CT chest with contrast | CT chest w/ | CT thorax with IV contrast",
       negations="contrast_allergy renal_failure"),

    protocol("CT Chest WO Contrast", [
        ind("pulmonary nodule follow-up | f/u lung nodule | 6 mm RLL nodule follow-up | "
            "lung nodule surveillance | follow-up pulmonary nodule per Fleischner",
            "R91.1 Solitary pulmonary nodule",
            "nodule stable at 6 mo | incidental nodule on prior CT | 8 mm solid nodule"),
        ind("multiple pulmonary nodules follow-up | f/u multiple small lung nodules",
            "R91.8 Other nonspecific abnormal finding of lung field",
            "largest 5 mm | 12 month follow-up"),
    ], history="former smoker | COPD", age=(35, 88),
       vague="CT chest | chest CT | CT thorax | CT chest noncon",
       precise="CT chest without contrast | CT chest w/o | noncontrast CT chest"),

    protocol("CT Chest High Resolution", [
        ind("interstitial lung disease | ILD | r/o ILD | c/f interstitial lung disease | "
            "ILD follow-up",
            "J84.9 Interstitial pulmonary disease, unspecified",
            "bibasilar crackles | restrictive PFTs | DLCO {35-60}%"),
        ind("pulmonary fibrosis | IPF | r/o pulmonary fibrosis | c/f IPF",
            "J84.10 Pulmonary fibrosis, unspecified; J84.112 Idiopathic pulmonary fibrosis",
            "velcro crackles | clubbing | on nintedanib"),
        ind("scleroderma lung | systemic sclerosis with lung involvement | connective tissue "
            "disease lung | RA-ILD screening",
            "M34.81 Systemic sclerosis with lung involvement",
            "positive Scl-70 | Raynaud | decreased DLCO"),
        ind("chronic dyspnea with crackles | progressive DOE and crackles | chronic SOB, "
            "fine crackles on exam",
            "R06.00 Dyspnea, unspecified", "DOE x 1 yr | dry cough"),
    ], history="scleroderma | rheumatoid arthritis | amiodarone use | bird exposure",
       meds="on mycophenolate | on nintedanib | on amiodarone", age=(35, 88),
       vague="CT chest | chest CT | CT lungs | CT chest noncon",
       precise="HRCT chest | high resolution CT chest | CT chest high-res prone/supine"),

    protocol("CTA Chest Pulmonary Embolism", [
        ind("suspected pulmonary embolism | r/o PE | c/f PE | eval for pulmonary embolus | "
            "?PE | concern for PE | rule out pulmonary embolism",
            "R06.02 Shortness of breath; R07.81 Pleurodynia; R00.0 Tachycardia, unspecified",
            "tachy {105-135} | sats {84-92}% RA | pleuritic CP | Wells {4.5-9} | "
            "hemoptysis | CXR clear | CXR unremarkable"),
        ind("positive D-dimer | elevated D-dimer | D-dimer {0.8-6.5}, r/o PE",
            "R79.1 Abnormal coagulation profile; R06.02 Shortness of breath",
            "SOB | tachycardic | recent travel | leg swelling"),
        ind("pleuritic chest pain with tachycardia | pleuritic CP and hypoxia | "
            "acute SOB and hypoxia | sudden dyspnea, tachy, hypoxic",
            "R07.81 Pleurodynia; R09.02 Hypoxemia",
            "HR {105-135} | SpO2 {84-92}% | CXR clear"),
    ], history="h/o DVT | recent knee replacement | s/p hip surgery 2 wks ago | active cancer "
       "on chemo | long-haul flight | immobilized | OCP use",
       labs="D-dimer {0.8-6.5} | troponin <0.01 | BNP {50-400}",
       meds="on OCPs | on tamoxifen | on estrogen", age=(18, 90),
       vague="CT chest | CTA chest | CT chest with contrast | CT angio chest | PE study",
       precise="CTA chest PE protocol | CT pulmonary angiogram | CTPA | CT PE protocol",
       negations="contrast_allergy renal_failure pregnancy"),

    protocol("CT Chest Low Dose Lung Cancer Screening", [
        ind("lung cancer screening | LCS | annual low-dose CT screening | "
            "screening for lung cancer, asymptomatic",
            "Z12.2 Encounter for screening for malignant neoplasm of respiratory organs; "
            "Z87.891 Personal history of nicotine dependence; F17.210 Nicotine dependence, "
            "cigarettes, uncomplicated",
            "{20-60} pack-years | quit {2-14} yrs ago | current smoker {1-2} ppd | "
            "asymptomatic | no prior cancer"),
    ], age=(50, 80), history="COPD | smoker",
       vague="CT chest | screening CT chest | chest CT low dose | lung screening",
       precise="LDCT lung screening | low-dose CT lung cancer screening"),

    protocol("CTA Aorta Dissection Protocol", [
        ind("suspected aortic dissection | r/o dissection | c/f aortic dissection | r/o AD",
            "I71.00 Dissection of unspecified site of aorta; R07.9 Chest pain, unspecified",
            "BP {180-230}/{95-125} | widened mediastinum | new AI murmur"),
        ind("tearing chest pain radiating to back | ripping back pain | sudden tearing chest "
            "pain | interscapular tearing pain",
            "R07.9 Chest pain, unspecified; M54.6 Pain in thoracic spine",
            "abrupt onset | BP {180-230}/{95-125}"),
        ind("pulse differential | BP differential between arms | pulse deficit with chest pain",
            "R07.9 Chest pain, unspecified", "SBP difference {20-45} mmHg"),
        ind("known aneurysm with new pain | thoracic aneurysm with new chest pain | "
            "AAA with new back pain",
            "I71.20 Thoracic aortic aneurysm, without rupture, unspecified",
            "known 5.1 cm ascending aorta | Marfan"),
    ], history="HTN | Marfan syndrome | bicuspid aortic valve | cocaine use",
       labs="troponin <0.01 | D-dimer {1.0-8.0}", age=(30, 90),
       vague="CTA chest | CT chest abdomen pelvis | CTA aorta | CT angio | CT chest",
       precise="CTA aorta dissection protocol | CTA chest/abd/pelvis dissection",
       negations="renal_failure"),

    protocol("CTA Coronary Arteries", [
        ind("stable chest pain with intermediate risk | atypical chest pain, low-intermediate "
            "risk | exertional chest pain, r/o CAD | stable angina eval",
            "R07.89 Other chest pain; I20.9 Angina pectoris, unspecified",
            "troponin neg x2 | equivocal stress test | HR {55-65} on metoprolol"),
        ind("anomalous coronary artery | r/o anomalous coronary origin | c/f coronary anomaly",
            "Q24.5 Malformation of coronary vessels",
            "exertional syncope in athlete | anomaly suspected on echo"),
        ind("coronary evaluation before valve surgery | pre-TAVR coronary eval | "
            "coronary assessment prior to non-coronary cardiac surgery",
            "I35.0 Nonrheumatic aortic (valve) stenosis", "severe AS | planned valve surgery"),
    ], history="HLD | family hx premature CAD | HTN | DM2", labs="Cr {0.6-1.1} | HR {52-68}",
       meds="on metoprolol | on atorvastatin", age=(35, 80),
       vague="CT heart | cardiac CT | coronary CT | CTA heart",
       precise="coronary CTA | CCTA | CT coronary angiogram",
       negations="contrast_allergy renal_failure"),

    protocol("CT Abdomen Pelvis W Contrast", [
        ind("acute abdominal pain | abd pain | diffuse abdominal pain | severe abdominal pain, "
            "unclear source",
            "R10.9 Unspecified abdominal pain; R10.84 Generalized abdominal pain",
            "guarding | WBC {11.0-19.0} | lactate {1.0-2.5}"),
        ind("appendicitis | r/o appendicitis | RLQ pain, c/f appy | RLQ pain r/o appy | "
            "periumbilical pain migrating to RLQ",
            "R10.31 Right lower quadrant pain; K35.80 Unspecified acute appendicitis",
            "McBurney point tenderness | WBC {11.0-18.0} | fever {38.1-39.2}"),
        ind("diverticulitis | r/o diverticulitis | LLQ pain, h/o diverticulitis | "
            "c/f complicated diverticulitis",
            "R10.32 Left lower quadrant pain; K57.92 Diverticulitis of intestine, part "
            "unspecified, without perforation or abscess without bleeding",
            "LLQ tenderness | fever | WBC {11.0-18.0}"),
        ind("bowel obstruction | r/o SBO | c/f small bowel obstruction | distension and "
            "vomiting, r/o obstruction",
            "K56.609 Unspecified intestinal obstruction, unspecified as to partial versus "
            "complete obstruction",
            "no BM x3 days | prior laparotomy | distended | dilated loops on KUB"),
        ind("intra-abdominal abscess | r/o abscess | post-op fever, r/o collection | "
            "c/f abdominal abscess",
            "K65.1 Peritoneal abscess", "POD {5-12} | fever | rising WBC"),
        ind("cancer staging | staging new colon cancer | colon ca staging | "
            "ovarian ca restaging | staging CAP",
            "C18.9 Malignant neoplasm of colon, unspecified",
            "biopsy-proven adenocarcinoma | CEA {5-60}"),
        ind("blunt abdominal trauma | MVC with abdominal pain | abdominal trauma | "
            "seatbelt sign abdomen",
            "S39.91XA Unspecified injury of abdomen, lower back, pelvis and external "
            "genitals, initial encounter",
            "FAST negative | abdominal wall bruising | tachycardic"),
    ], history="prior appendectomy | IBD | prior SBO | diabetes | colon cancer",
       labs="WBC {4.0-19.0} | lipase {20-60} | Cr {0.6-1.2} | eGFR {60-110}",
       age=(18, 90), vague="CT abdomen | CT abd/pelvis | CT A/P | CTAP | abd CT | "
       "CT abdomen and pelvis",
       precise="CT abdomen pelvis with contrast | CT A/P w/ IV contrast | CTAP with contrast",
       negations="contrast_allergy renal_failure pregnancy"),

    protocol("CT Abdomen W Contrast", [
        ind("liver laceration follow-up | f/u grade III liver laceration | spleen laceration "
            "f/u | splenic injury follow-up | upper abdominal organ injury",
            "S36.114A Minor laceration of liver, initial encounter; S36.030A Superficial "
            "(capsular) laceration of spleen, initial encounter",
            "Hgb drop {1.5-3.0} g/dL | managed nonoperatively | LUQ pain"),
        ind("post-procedural bleeding after liver biopsy | hematoma after renal biopsy | "
            "r/o bleed post liver bx | bleeding after percutaneous biopsy",
            "R58 Hemorrhage, not elsewhere classified",
            "Hgb {7.0-9.5} from {10.5-13.0} | hypotensive | RUQ pain post-procedure"),
        ind("abdominal wall collection | abdominal wall abscess | r/o abdominal wall hematoma | "
            "incision site collection",
            "L02.211 Cutaneous abscess of abdominal wall",
            "erythema at incision | fluctuance | post-op day {5-14}"),
    ], history="recent liver biopsy | recent trauma | on anticoagulation", labs="Hgb {7.0-12.0}",
       age=(18, 85), vague="CT abdomen | CT abd | abdominal CT | CT abdomen with contrast",
       precise="CT abdomen with contrast | CT abd w/ IV contrast",
       negations="contrast_allergy renal_failure"),

    protocol("CT Renal Stone Protocol", [
        ind("acute flank pain | {side} flank pain | severe {side} flank pain | "
            "flank pain radiating to groin",
            "R10.9 Unspecified abdominal pain; N23 Unspecified renal colic",
            "writhing | CVA tenderness | UA + blood | nausea"),
        ind("suspected nephrolithiasis | r/o kidney stone | c/f ureterolithiasis | "
            "r/o ureteral stone | known stones with recurrent pain",
            "N20.0 Calculus of kidney; N20.1 Calculus of ureter",
            "h/o stones | UA {10-50} RBC"),
        ind("renal colic | {side} renal colic | colicky flank pain",
            "N23 Unspecified renal colic", "prior stone passage | hematuria on UA"),
    ], history="h/o nephrolithiasis | gout | prior ureteroscopy", labs="Cr {0.7-1.4}",
       meds="on tamsulosin | on ketorolac", age=(18, 80),
       vague="CT abdomen | CT abd/pelvis | CT KUB | CT noncon abdomen | CT A/P",
       precise="CT stone protocol | CT renal stone protocol | CT A/P without contrast, stone",
       negations="contrast_allergy pregnancy"),

    protocol("CT Urography", [
        ind("urothelial carcinoma surveillance | h/o bladder cancer surveillance | "
            "upper tract urothelial ca f/u | TCC surveillance",
            "Z85.51 Personal history of malignant neoplasm of bladder; C67.9 Malignant "
            "neoplasm of bladder, unspecified",
            "s/p TURBT | on BCG | cystoscopy negative"),
        ind("collecting system evaluation | eval upper tracts | filling defect renal pelvis on "
            "US | collecting system abnormality",
            "N28.89 Other specified disorders of kidney and ureter",
            "abnormal cytology | filling defect on prior imaging"),
    ], history="smoker | bladder cancer | aniline dye exposure", labs="Cr {0.6-1.2}",
       age=(35, 88), vague="CT abdomen | CT abd/pelvis | CT A/P | CT kidneys",
       precise="CT urogram | CTU | CT urography triple phase",
       negations="contrast_allergy renal_failure"),

    protocol("CT Liver Multiphase", [
        ind("HCC surveillance in cirrhosis | hepatocellular carcinoma surveillance | "
            "cirrhosis, HCC screening | surveillance for HCC",
            "K74.60 Unspecified cirrhosis of liver; B18.2 Chronic viral hepatitis C",
            "AFP {8-400} | NASH cirrhosis | Child-Pugh A"),
        ind("arterially enhancing liver lesion in cirrhosis | LI-RADS observation follow-up | "
            "LR-3 observation f/u | new liver lesion in cirrhotic",
            "K76.89 Other specified diseases of liver; R77.2 Abnormality of alphafetoprotein",
            "rising AFP | 1.8 cm lesion on US"),
        ind("known HCC post treatment | HCC s/p TACE follow-up | post-ablation f/u HCC",
            "C22.0 Liver cell carcinoma", "s/p TACE {1-6} mo ago | s/p microwave ablation"),
        ind("pre-transplant liver evaluation | liver transplant eval | pre-OLT imaging",
            "Z76.82 Awaiting organ transplant status; K74.60 Unspecified cirrhosis of liver",
            "MELD {12-30} | on transplant list"),
    ], history="hep C | hep B | EtOH cirrhosis | NASH", labs="AFP {5-800} | bili {0.8-3.5} | "
       "plt {60-160}K", age=(30, 80),
       vague="CT liver | CT abdomen | CT abd | liver CT with contrast",
       precise="triple phase liver CT | CT liver multiphase | 4-phase liver CT",
       negations="contrast_allergy renal_failure"),

    protocol("CT Pancreas Protocol", [
        ind("pancreatic mass | r/o pancreatic mass | pancreatic head mass on US | "
            "c/f pancreatic cancer",
            "R93.3 Abnormal findings on diagnostic imaging of other parts of digestive tract; "
            "C25.9 Malignant neoplasm of pancreas, unspecified",
            "CA 19-9 {60-2000} | dilated pancreatic duct"),
        ind("pancreatic cancer staging | staging pancreatic adenocarcinoma | resectability "
            "assessment pancreatic ca",
            "C25.0 Malignant neoplasm of head of pancreas",
            "EUS biopsy adenocarcinoma | neoadjuvant FOLFIRINOX"),
        ind("IPMN follow-up | pancreatic cyst follow-up | f/u branch duct IPMN",
            "K86.2 Cyst of pancreas; D13.6 Benign neoplasm of pancreas",
            "2.2 cm cyst | no worrisome features"),
        ind("painless jaundice with weight loss | painless jaundice | new jaundice and weight "
            "loss, r/o pancreatic ca",
            "R17 Unspecified jaundice; R63.4 Abnormal weight loss",
            "bili {4.0-15.0} | 15 lb wt loss | Courvoisier sign"),
    ], history="new onset diabetes | smoker | chronic pancreatitis", labs="CA 19-9 {20-2000} | "
       "bili {0.5-15.0}", age=(40, 88),
       vague="CT abdomen | CT pancreas | CT abd with contrast | CT abdomen pelvis",
       precise="CT pancreas protocol | pancreatic protocol CT | CT pancreas dual phase",
       negations="contrast_allergy renal_failure"),

    protocol("CT Adrenal Protocol", [
        ind("adrenal incidentaloma | incidental adrenal nodule | adrenal mass found on CT | "
            "indeterminate {side} adrenal nodule",
            "E27.8 Other specified disorders of adrenal gland; D35.00 Benign neoplasm of "
            "unspecified adrenal gland",
            "2.1 cm adrenal nodule | HU {12-35} on noncon"),
        ind("adrenal nodule washout | adrenal washout study | characterize adrenal adenoma",
            "R93.5 Abnormal findings on diagnostic imaging of other abdominal regions, "
            "including retroperitoneum", "metanephrines normal | DST normal"),
    ], history="HTN | hypokalemia", labs="plasma metanephrines normal | cortisol after DST "
       "{0.8-2.5}", age=(30, 85),
       vague="CT abdomen | CT adrenals | CT abd | adrenal CT",
       precise="CT adrenal protocol | adrenal washout CT | CT adrenal w/wo",
       negations="contrast_allergy"),

    protocol("CTA Abdomen Pelvis", [
        ind("acute GI bleeding | GI bleed | active lower GI bleed | hematochezia, r/o active "
            "bleed | brisk BRBPR",
            "K92.2 Gastrointestinal hemorrhage, unspecified; K62.5 Hemorrhage of anus and "
            "rectum",
            "Hgb {6.0-8.5} | transfused {2-4} units | hypotensive | tachycardic"),
        ind("mesenteric ischemia | r/o mesenteric ischemia | pain out of proportion to exam | "
            "c/f acute mesenteric ischemia",
            "K55.019 Acute (reversible) ischemia of small intestine, extent unspecified",
            "afib | lactate {2.5-7.0} | pain out of proportion"),
        ind("abdominal aortic aneurysm follow-up | EVAR follow-up | AAA, EVAR planning | "
            "s/p EVAR surveillance | endoleak eval",
            "I71.40 Abdominal aortic aneurysm, without rupture, unspecified; Z95.828 Presence "
            "of other vascular implants and grafts",
            "AAA {4.5-6.5} cm | s/p EVAR {1-5} yrs"),
    ], history="afib | CAD | PVD | diverticulosis | smoker", labs="Hgb {6.0-13.0} | "
       "lactate {1.0-7.0} | Cr {0.6-1.3}", age=(45, 92),
       vague="CT abdomen | CTA abdomen | CT A/P | CT angio abd/pelvis",
       precise="CTA abdomen pelvis | CT angiogram abdomen and pelvis | CTA A/P",
       negations="renal_failure"),

    protocol("CT Enterography", [
        ind("Crohn's disease | Crohn disease follow-up | eval Crohn activity | small bowel "
            "Crohn's | r/o Crohn's",
            "K50.90 Crohn's disease, unspecified, without complications; K50.00 Crohn's "
            "disease of small intestine without complications",
            "on adalimumab | CRP {10-80} | diarrhea and weight loss"),
        ind("small bowel inflammation | terminal ileitis | r/o small bowel inflammatory disease",
            "K52.9 Noninfective gastroenteritis and colitis, unspecified",
            "ileitis on colonoscopy | fecal calprotectin {200-1500}"),
        ind("obscure GI bleeding | small bowel source of bleeding | occult GI bleed, negative "
            "EGD and colonoscopy",
            "K92.2 Gastrointestinal hemorrhage, unspecified; D50.0 Iron deficiency anemia "
            "secondary to blood loss (chronic)",
            "negative EGD and colonoscopy | iron deficiency | Hgb {7.5-10.5}"),
    ], history="Crohn's | prior ileocecectomy", meds="on adalimumab | on infliximab | on "
       "budesonide", age=(16, 75),
       vague="CT abdomen | CT abd/pelvis | CT small bowel | CT A/P",
       precise="CT enterography | CTE | CT enterography with oral contrast",
       negations="contrast_allergy renal_failure"),

    protocol("CT Colonography", [
        ind("colorectal cancer screening | colon cancer screening | virtual colonoscopy for "
            "screening | screening CTC",
            "Z12.11 Encounter for screening for malignant neoplasm of colon",
            "average risk | declines optical colonoscopy"),
        ind("incomplete colonoscopy | failed colonoscopy | colonoscopy incomplete due to "
            "tortuous colon",
            "Z12.11 Encounter for screening for malignant neoplasm of colon; "
            "Z86.010 Personal history of colonic polyps",
            "could not reach cecum | redundant colon"),
    ], history="on anticoagulation | family hx colon ca", age=(45, 85),
       vague="CT abdomen | CT colon | CT abd/pelvis | virtual colonoscopy",
       precise="CT colonography | CTC | virtual colonoscopy CT"),

    protocol("MRI Abdomen W and WO Contrast", [
        ind("indeterminate liver lesion on prior CT | indeterminate hepatic lesion | liver "
            "lesion too small to characterize on CT | liver lesion characterization by MRI",
            "R93.2 Abnormal findings on diagnostic imaging of liver and biliary tract",
            "1.2 cm hypodensity on CT | r/o hemangioma vs FNH"),
        ind("indeterminate renal lesion | complex renal cyst on CT | Bosniak IIF cyst f/u | "
            "indeterminate renal mass on CT",
            "R93.429 Abnormal radiologic findings on diagnostic imaging of unspecified kidney; "
            "N28.1 Cyst of kidney, acquired", "enhancement equivocal on CT"),
    ], history="hep B | cirrhosis | renal cyst", labs="eGFR {60-110} | AFP {2-12}", age=(25, 85),
       vague="MRI abdomen | MR abdomen | MRI liver | abdominal MRI",
       precise="MRI abdomen with and without contrast | MRI abd w/wo | MR liver w+w/o",
       negations="pacemaker claustrophobia"),

    protocol("MRCP", [
        ind("choledocholithiasis | r/o CBD stone | c/f choledocholithiasis | "
            "r/o common bile duct stone",
            "K80.50 Calculus of bile duct without cholangitis or cholecystitis without "
            "obstruction",
            "CBD {7-12} mm on US | bili {2.0-6.0} | s/p cholecystectomy"),
        ind("biliary obstruction | obstructive jaundice, r/o stone vs stricture | "
            "biliary stricture eval",
            "K83.1 Obstruction of bile duct", "ALP {200-700} | bili {2.0-9.0}"),
        ind("dilated bile duct | dilated CBD on US | biliary ductal dilatation",
            "K83.8 Other specified diseases of biliary tract",
            "CBD {8-14} mm | elevated LFTs"),
        ind("primary sclerosing cholangitis | PSC | PSC surveillance | c/f PSC",
            "K83.01 Primary sclerosing cholangitis", "ulcerative colitis | ALP {250-600}"),
    ], history="ulcerative colitis | cholecystectomy | gallstones", labs="ALP {150-700} | "
       "bili {1.2-9.0} | ALT {60-400}", age=(20, 88),
       vague="MRI abdomen | MR abdomen | MRI biliary | MRI liver",
       precise="MRCP | MR cholangiopancreatography | MRI MRCP",
       negations="pacemaker"),

    protocol("MRI Prostate Multiparametric", [
        ind("elevated PSA | rising PSA | PSA {4.5-20.0} | elevated PSA, biopsy planning",
            "R97.20 Elevated prostate specific antigen [PSA]",
            "PSA {4.5-20.0} | PSA density 0.2 | negative prior biopsy"),
        ind("prostate cancer detection | prostate cancer staging | newly dx prostate "
            "adenocarcinoma, staging | Gleason 3+4 staging",
            "C61 Malignant neoplasm of prostate", "Gleason {6-8} | cT2"),
        ind("active surveillance prostate cancer | prostate ca on active surveillance | "
            "AS prostate cancer annual MRI",
            "C61 Malignant neoplasm of prostate", "Gleason 3+3 | stable PSA"),
        ind("PI-RADS lesion follow-up | f/u PI-RADS 3 lesion | prior PI-RADS 4, re-eval",
            "R97.20 Elevated prostate specific antigen [PSA]", "prior MRI 1 yr ago"),
    ], sex="male", history="family hx prostate ca | BPH", labs="PSA {3.0-25.0}",
       meds="on finasteride | on tamsulosin", age=(45, 85),
       vague="MRI prostate | MRI pelvis | prostate MRI | MR pelvis",
       precise="multiparametric MRI prostate | mpMRI prostate | MRI prostate w/wo",
       negations="pacemaker"),

    protocol("MRI Pelvis W and WO Contrast", [
        ind("uterine fibroids before embolization | fibroids, pre-UAE planning | "
            "leiomyoma mapping before UFE",
            "D25.9 Leiomyoma of uterus, unspecified",
            "menorrhagia | bulk symptoms | IR consult for UFE", sex="female", age=(28, 55)),
        ind("endometrial cancer staging | staging endometrial ca | cervical cancer staging | "
            "local staging cervical carcinoma",
            "C54.1 Malignant neoplasm of endometrium; C53.9 Malignant neoplasm of cervix "
            "uteri, unspecified",
            "biopsy-proven endometrioid adenoca | FIGO stage pending", sex="female",
            age=(30, 85)),
        ind("indeterminate adnexal mass on US | complex adnexal mass, indeterminate on US | "
            "O-RADS 4 adnexal lesion",
            "N83.209 Unspecified ovarian cyst, unspecified side; R19.00 Intra-abdominal and "
            "pelvic swelling, mass and lump, unspecified site",
            "solid component on US | CA-125 {20-90}", sex="female", age=(20, 80)),
        ind("rectal cancer staging | staging rectal adenocarcinoma | rectal ca restaging "
            "after chemoradiation",
            "C20 Malignant neoplasm of rectum", "mass 8 cm from anal verge | post TNT"),
    ], history="prior pelvic surgery", labs="eGFR {60-110}", age=(28, 85),
       vague="MRI pelvis | MR pelvis | pelvic MRI | MRI pelvis w contrast",
       precise="MRI pelvis with and without contrast | MRI pelvis w/wo | MR pelvis w+w/o",
       negations="pacemaker claustrophobia"),

    protocol("US Abdomen Right Upper Quadrant", [
        ind("right upper quadrant pain | RUQ pain | RUQ abd pain | epigastric and RUQ pain "
            "after meals",
            "R10.11 Right upper quadrant pain",
            "positive Murphy sign | postprandial | nausea"),
        ind("suspected cholecystitis | r/o cholecystitis | c/f acute cholecystitis | "
            "eval for cholecystitis",
            "K81.0 Acute cholecystitis; R10.11 Right upper quadrant pain",
            "fever {38.0-39.2} | Murphy + | WBC {11.0-17.0}"),
        ind("gallstones | cholelithiasis | r/o gallstones | biliary colic",
            "K80.20 Calculus of gallbladder without cholecystitis without obstruction",
            "fatty food intolerance | episodic RUQ pain"),
        ind("elevated liver enzymes | abnormal LFTs | transaminitis | elevated ALT/AST",
            "R74.01 Elevation of levels of liver transaminase levels",
            "ALT {60-300} | AST {50-250}"),
        ind("fatty liver | r/o hepatic steatosis | NAFLD eval",
            "K76.0 Fatty (change of) liver, not elsewhere classified", "BMI {31-45}"),
    ], history="obesity | DM2 | EtOH use", labs="ALT {20-300} | ALP {70-300} | lipase "
       "{20-60} | bili {0.4-2.5}", age=(18, 85),
       vague="US abdomen | abdominal ultrasound | RUQ US | US RUQ | ultrasound gallbladder",
       precise="RUQ ultrasound | US abdomen right upper quadrant | limited US RUQ",
       negations="pregnancy"),

    protocol("US Renal", [
        ind("acute kidney injury | AKI | rising creatinine | r/o obstruction, AKI",
            "N17.9 Acute kidney failure, unspecified",
            "Cr {1.8-4.5} from baseline {0.8-1.2} | decreased urine output"),
        ind("hydronephrosis | r/o hydronephrosis | f/u hydronephrosis | c/f obstructive "
            "uropathy",
            "N13.30 Unspecified hydronephrosis", "on prior CT | rising Cr"),
        ind("renal size | CKD, evaluate renal size | CKD workup | medical renal disease eval",
            "N18.4 Chronic kidney disease, stage 4 (severe); N18.3 Chronic kidney disease, "
            "stage 3 unspecified", "proteinuria | nephrology referral"),
        ind("recurrent urinary tract infections | recurrent UTIs | recurrent pyelonephritis",
            "N39.0 Urinary tract infection, site not specified",
            "{3-6} UTIs in past year | E coli"),
    ], history="HTN | DM2 | BPH | CKD", labs="Cr {0.9-4.5} | BUN {18-70}", age=(18, 90),
       vague="US kidneys | renal ultrasound | US abdomen | kidney US | retroperitoneal US",
       precise="renal ultrasound | US renal complete | US kidneys and bladder",
       negations="pregnancy"),

    protocol("US Pelvis Transabdominal and Transvaginal", [
        ind("pelvic pain | {side} pelvic pain | lower abdominal pain in female | adnexal pain",
            "R10.2 Pelvic and perineal pain", "hCG negative | LMP {1-4} wks ago"),
        ind("abnormal uterine bleeding | AUB | menorrhagia | heavy menstrual bleeding",
            "N93.9 Abnormal uterine and vaginal bleeding, unspecified",
            "Hgb {8.5-12.0} | hCG negative"),
        ind("ovarian cyst | f/u ovarian cyst | {side} ovarian cyst follow-up",
            "N83.209 Unspecified ovarian cyst, unspecified side", "4 cm cyst on prior US"),
        ind("suspected ovarian torsion | r/o ovarian torsion | c/f torsion",
            "N83.519 Torsion of ovary and ovarian pedicle, unspecified side",
            "sudden severe pelvic pain | vomiting | hCG negative"),
        ind("postmenopausal bleeding | PMB | vaginal bleeding, postmenopausal",
            "N95.0 Postmenopausal bleeding", "on HRT | LMP 10 yrs ago", age=(50, 85)),
    ], sex="female", history="PCOS | endometriosis | fibroids", labs="hCG negative | Hgb "
       "{9.0-13.5}", age=(16, 60),
       vague="US pelvis | pelvic ultrasound | pelvic US | transvaginal US | US",
       precise="US pelvis transabdominal and transvaginal | pelvic US TA/TV"),

    protocol("US Obstetric First Trimester", [
        ind("early pregnancy bleeding | vaginal bleeding in early pregnancy | "
            "first trimester bleeding | threatened abortion",
            "O20.9 Hemorrhage in early pregnancy, unspecified; O20.0 Threatened abortion",
            "{6-12} wks by LMP | hCG {1500-60000} | spotting"),
        ind("pregnancy dating | dating ultrasound | uncertain LMP, dating | viability and "
            "dating",
            "Z36.87 Encounter for antenatal screening for uncertain dates; Z3A.08 8 weeks "
            "gestation of pregnancy", "LMP uncertain | positive home test"),
        ind("suspected ectopic pregnancy | r/o ectopic | c/f ectopic pregnancy | "
            "PUL, r/o ectopic",
            "O00.90 Unspecified ectopic pregnancy without intrauterine pregnancy",
            "hCG {1200-8000} | {side} adnexal pain | prior ectopic"),
        ind("positive hCG with pelvic pain | pelvic pain, + pregnancy test | "
            "+hCG and cramping",
            "R10.2 Pelvic and perineal pain; Z33.1 Pregnant state, incidental",
            "hCG {800-30000} | {5-10} wks by LMP"),
    ], sex="female", history="prior ectopic | IVF pregnancy | G{2-4}P{0-2}", age=(18, 44),
       vague="US pelvis | OB ultrasound | pelvic US | early OB US | US",
       precise="OB US first trimester | obstetric ultrasound <14 wks | first trimester US"),

    protocol("NM Lung Ventilation Perfusion", [
        ind("CTEPH evaluation | r/o chronic thromboembolic pulmonary hypertension | "
            "pulmonary hypertension workup, r/o CTEPH",
            "I27.24 Chronic thromboembolic pulmonary hypertension; I27.20 Pulmonary "
            "hypertension, unspecified",
            "RVSP {50-85} on echo | prior PE | persistent dyspnea after anticoagulation"),
    ], history="h/o PE | h/o DVT", age=(30, 85),
       vague="V/Q scan | VQ | lung scan | NM lung | nuclear lung scan",
       precise="V/Q scan | NM lung ventilation perfusion | ventilation-perfusion scan"),

    protocol("NM Hepatobiliary HIDA", [
        ind("cholecystitis equivocal on ultrasound | equivocal RUQ US for cholecystitis | "
            "r/o acalculous cholecystitis, US nondiagnostic | US indeterminate for "
            "cholecystitis",
            "K81.0 Acute cholecystitis; R10.11 Right upper quadrant pain",
            "gallbladder wall thickening without stones | US equivocal"),
        ind("biliary dyskinesia | r/o biliary dyskinesia | GB ejection fraction | "
            "CCK HIDA for functional GB disorder",
            "K82.8 Other specified diseases of gallbladder",
            "recurrent RUQ pain, normal US | no gallstones on US"),
        ind("bile leak after cholecystectomy | r/o bile leak | c/f bile leak post lap chole",
            "K91.89 Other postprocedural complications and disorders of digestive system",
            "POD {2-7} | RUQ fluid on US | rising bili"),
    ], history="prior RUQ US negative | recent lap chole", age=(18, 85),
       vague="HIDA | hepatobiliary scan | NM gallbladder | nuclear medicine GB scan",
       precise="HIDA scan | hepatobiliary scintigraphy | NM hepatobiliary with CCK"),

    protocol("XR Chest 2 Views", [
        ind("cough | persistent cough | productive cough x {1-3} wks | cough and fever",
            "R05.9 Cough, unspecified", "no hemoptysis | rhonchi"),
        ind("fever | fever of unknown source | febrile, r/o pneumonia",
            "R50.9 Fever, unspecified", "T {38.1-39.6} | UA negative"),
        ind("suspected pneumonia | r/o PNA | c/f pneumonia | r/o pneumonia",
            "J18.9 Pneumonia, unspecified organism",
            "crackles RLL | WBC {11.0-18.0} | productive cough"),
        ind("shortness of breath | SOB | dyspnea | DOE",
            "R06.02 Shortness of breath", "wheezing | sats {93-97}% RA"),
        ind("pre-operative chest evaluation | pre-op CXR | preop clearance | pre-op chest x-ray",
            "Z01.811 Encounter for preprocedural respiratory examination; Z01.818 Encounter "
            "for other preprocedural examination", "scheduled for hip replacement"),
    ], history="COPD | asthma | smoker | CHF", labs="WBC {5.0-18.0}", age=(18, 95),
       vague="chest x-ray | CXR | chest xray | XR chest | chest film",
       precise="CXR PA and lateral | chest x-ray 2 views | XR chest PA/lat"),
]

HEMATURIA = protocol("scenario:hematuria", [
    ind("gross hematuria | blood in urine | hematuria | visible hematuria | "
        "microscopic hematuria",
        "R31.0 Gross hematuria; R31.9 Hematuria, unspecified",
        "UA {10-100} RBC/hpf | clots | no recent instrumentation"),
], history="smoker | BPH | on aspirin", labs="Cr {0.7-1.2} | UA RBC {5-100}", age=(35, 88),
   vague="CT abdomen | CT abd/pelvis | CT A/P | imaging kidneys | hematuria workup")
