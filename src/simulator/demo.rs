//! Seeded, realistic demo data: what a tele-reporting practice's QUBS holds, oddities
//! included (blank fields, lower-case priorities and comment types, unicode names, family
//! names with particles (Te Rangi, Ó Súilleabháin, van der Berg) and hyphenated given
//! names, names in one field or in first/last fields, HL7 delimiters inside clinical text,
//! a very long clinical note, appointments at daylight-saving edges). Every appointment
//! carries the exam code of the study it describes.
//!
//! Every run produces the same data (fixed seed), except the demo client's secret, which is
//! random so that no credential is ever committed or reused.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::Simulator;
use super::state::PENDING_REPORTING;

/// The demo domain the demo client may use.
pub const DEMO_DOMAIN: &str = "acme";
/// A second domain the demo client may *not* use (answers 403).
pub const OTHER_DOMAIN: &str = "globex";
/// The demo client's id; its secret is generated per simulator.
pub const DEMO_CLIENT_ID: &str = "qubs-bridge-demo";

const SEED: u64 = 0x5155_4253; // "QUBS"

/// Sites and their IANA zones: two with daylight saving, two without.
const SITES: &[(&str, &str)] = &[
    ("Harbour Imaging", "Australia/Sydney"),
    ("Northgate Radiology", "Australia/Brisbane"),
    ("Lakeside MRI", "America/New_York"),
    ("Kowhai Medical Imaging", "Pacific/Auckland"),
];

/// (family, given) — unicode, particles, hyphens, apostrophes.
const PATIENTS: &[(&str, &str)] = &[
    ("Citizen", "Jane"),
    ("Ångström", "Zoë"),
    ("Núñez-García", "José"),
    ("Nguyễn", "Văn An"),
    ("O'Brien", "Siobhán"),
    ("Te Rangi", "Māui"),
    ("王", "芳"),
    ("Müller", "Jürgen"),
    ("Papadopoulos", "Eleni"),
    ("Smith", "John Paul"),
    ("Kowalczyk", "Łucja"),
    ("d'Arcy", "Noël"),
    ("Singh", "Harpreet"),
    ("Okonkwo", "Chidi"),
    ("Lindqvist", "Åsa"),
    ("Tanaka", "Hiroshi"),
    ("Al-Hashimi", "Layla"),
    ("Brown", "Oliver"),
    ("Ivanova", "Дарья"),
    ("Fitzgerald", "Aoife"),
];

/// (description, modality, exam code, the clinical question the referrer writes for it)
const STUDIES: &[(&str, &str, &str, &str)] = &[
    (
        "CT Brain non-contrast",
        "CT",
        "CTBRN",
        "Persistent headache 3/52, r/o SOL",
    ),
    (
        "MRI Knee Left",
        "MR",
        "MRKNL",
        "Pain |L| knee ^ swelling ~ hx \\ twisting injury & locking",
    ),
    (
        "XR Chest PA/Lateral",
        "CR",
        "XRCHE",
        "Cough 4/52, ?consolidation",
    ),
    (
        "US Abdomen complete",
        "US",
        "USABD",
        "Deranged LFTs, ?gallstones",
    ),
    (
        "CT Pulmonary Angiogram",
        "CT",
        "CTPA",
        "SOB on exertion. D-dimer raised.",
    ),
    (
        "MRI Lumbar Spine",
        "MR",
        "MRLSP",
        "Lower back pain radiating to L leg; numbness L5 dermatome",
    ),
    (
        "Mammogram Bilateral Screening",
        "MG",
        "MGBIL",
        "Screening. FHx breast Ca (mother, 52).",
    ),
    (
        "XR Ankle Right 3 views",
        "CR",
        "XRANR",
        "Fall from ladder, ?fracture",
    ),
    (
        "CT Abdomen/Pelvis with contrast",
        "CT",
        "CTABP",
        "Abdo pain RIF, fever 38.4 °C, WCC 14",
    ),
    (
        "US Thyroid",
        "US",
        "USTHY",
        "Palpable thyroid nodule — ?MNG",
    ),
];

/// Free-text priorities as QUBS stores them.
const PRIORITIES: &[&str] = &[
    "Routine",
    "routine",
    "ROUTINE",
    "urgent",
    "Urgent",
    "STAT",
    "Urgent - same day",
    "Semi-urgent",
    "",
    " routine ",
];

/// A radiologist: user id, (title, given, family), e-mail, provider number. Family names
/// with particles and hyphenated given names are the ones a name parser gets wrong.
struct Radiologist {
    user_id: &'static str,
    title: &'static str,
    given: &'static str,
    family: &'static str,
    email: &'static str,
    provider_number: &'static str,
}

const RADIOLOGISTS: &[Radiologist] = &[
    Radiologist {
        user_id: "u-1001",
        title: "Dr",
        given: "Priya",
        family: "Raman",
        email: "praman@harbour-imaging.example",
        provider_number: "2045671A",
    },
    Radiologist {
        user_id: "u-1002",
        title: "Dr",
        given: "Tomás",
        family: "Ó Súilleabháin",
        email: "tos@harbour-imaging.example",
        provider_number: "3312874B",
    },
    Radiologist {
        user_id: "u-1003",
        title: "Dr",
        given: "Mei-Ling",
        family: "Chen",
        email: "mchen@northgate.example",
        provider_number: "4478120C",
    },
];

/// Referring doctors: (title, given, family). QUBS has them as `doctorName` and as
/// `doctorFirstName`/`doctorLastName`; the demo uses both, either, or one of them.
const REFERRERS: &[(&str, &str, &str)] = &[
    ("Dr", "Alan", "Referrer"),
    ("Dr", "Aroha", "Te Rangi"),
    ("Dr", "Siobhán", "Ó Súilleabháin"),
    ("Prof", "Pieter", "van der Berg"),
    ("Dr", "Mei-Ling", "Chen"),
];

/// (commentType as QUBS stores it, text, isAlert). Types come in any case; an alert is
/// flagged by isAlert, which QUBS also sets on an appointment comment now and then.
const COMMENTS: &[(&str, &str, bool)] = &[
    ("AA", "Allergic to iodinated contrast — premedicate", true),
    (
        "pa",
        "Patient has a cardiac pacemaker (MR conditional: check)",
        true,
    ),
    (
        "AC",
        "Prior imaging at outside facility, CD supplied",
        false,
    ),
    (
        "PC",
        "Prefers morning appointments; interpreter required (Mandarin)",
        false,
    ),
    (
        "AC",
        "Compare with 2025 study | see ^ report ~ & addendum \\ attached",
        false,
    ),
    ("AC", "Claustrophobic: may need sedation", true),
];

/// Registers the demo client and seeds the demo domains.
pub(crate) fn seed(sim: &Simulator) {
    let secret: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    sim.add_client(DEMO_CLIENT_ID, &secret, &[DEMO_DOMAIN]);
    for (name, zone) in SITES {
        sim.add_site(DEMO_DOMAIN, name, zone);
    }
    sim.add_site(OTHER_DOMAIN, "Thames Diagnostics", "Europe/London");

    let mut rng = StdRng::seed_from_u64(SEED);
    for n in 0..48u32 {
        let appointment = appointment(&mut rng, n);
        let id = appointment["appointmentId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let patient_id = appointment["patientId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        sim.put_appointment(DEMO_DOMAIN, appointment);
        for (k, comment) in comments(&mut rng, &id, &patient_id).into_iter().enumerate() {
            let mut c = comment;
            c["guid"] = json!(format!("c-{id}-{k}"));
            sim.add_comment(DEMO_DOMAIN, &id, c);
        }
        if n % 3 != 2 {
            let mut meta = Map::new();
            meta.insert("guid".into(), json!(format!("att-{id}-1")));
            meta.insert("category".into(), json!("Referral"));
            meta.insert("fileName".into(), json!(format!("referral-{id}.pdf")));
            meta.insert("addedDateTime".into(), json!("2026-11-20T23:14:05Z"));
            meta.insert("addedBy".into(), json!({"userId": "u-2001"}));
            meta.insert("lastModifiedDateTime".into(), json!("2026-11-20T23:14:05Z"));
            sim.add_attachment(DEMO_DOMAIN, &id, meta, "application/pdf", referral_pdf(&id));
        }
        if n % 8 == 0 {
            let mut meta = Map::new();
            meta.insert("guid".into(), json!(format!("att-{id}-2")));
            meta.insert("category".into(), json!("Worksheet"));
            meta.insert("fileName".into(), json!(format!("worksheet-{id}.pdf")));
            meta.insert("addedDateTime".into(), json!("2026-11-21T01:02:03Z"));
            meta.insert("addedBy".into(), json!({}));
            sim.add_attachment(DEMO_DOMAIN, &id, meta, "application/pdf", referral_pdf(&id));
        }
    }
    for n in 0..5u32 {
        let mut a = appointment(&mut rng, 900 + n);
        a["domain"] = json!(OTHER_DOMAIN);
        a["scheduledSite"] = json!("Thames Diagnostics");
        sim.put_appointment(OTHER_DOMAIN, a);
    }
}

/// Adds `count` more pending appointments (ids `B0000001`…) to the demo domain, for load
/// tests; they have no comments or attachments.
pub fn seed_bulk(sim: &Simulator, count: u32) {
    let mut rng = StdRng::seed_from_u64(SEED ^ 0xB01C);
    for n in 0..count {
        let mut a = appointment(&mut rng, 48 + n);
        a["appointmentId"] = json!(format!("B{n:07}"));
        a["status"] = json!(PENDING_REPORTING);
        sim.put_appointment(DEMO_DOMAIN, a);
    }
}

fn appointment(rng: &mut StdRng, n: u32) -> Value {
    let id = format!("A{:06}", 100_000 + n);
    let (family, given) = PATIENTS[n as usize % PATIENTS.len()];
    let (study, modality, code, question) = *STUDIES.choose(rng).expect("studies");
    let (site, _) = SITES[n as usize % SITES.len()];
    // Most are pending reporting; a few are elsewhere in the workflow.
    let status = match n % 12 {
        5 => "AUTHORISED",
        11 => "DICTATION INPROGRESS",
        _ => PENDING_REPORTING,
    };
    let (date, start) = match n {
        // Daylight-saving edges: Sydney's 2026 change back (02:30 happens twice) and forward
        // (02:30 never happens); New York's spring gap and autumn overlap.
        0 => ("2026-04-05".to_string(), "02:30:00".to_string()),
        4 => ("2026-10-04".to_string(), "02:30:00".to_string()),
        2 => ("2026-03-08".to_string(), "02:30:00".to_string()),
        6 => ("2026-11-01".to_string(), "01:30:00".to_string()),
        _ => (
            format!("2026-11-{:02}", 2 + rng.random_range(0..25)),
            format!(
                "{:02}:{:02}:00",
                7 + rng.random_range(0..11),
                [0, 15, 30, 45][rng.random_range(0..4)]
            ),
        ),
    };
    let end = {
        let h: u32 = start[..2].parse().unwrap_or(8);
        format!("{:02}{}", (h + 1) % 24, &start[2..])
    };
    // The clinical question fits the study; some referrers leave it blank, some type the
    // HL7 delimiters into it.
    let mut clinical = match n % 10 {
        6 => String::new(),
        3 => format!("{question} | hx ^ prev ~ see \\ & compare"),
        _ => question.to_string(),
    };
    if n == 7 {
        // A very long referral letter pasted into the clinical notes, line by line.
        clinical = (0..160)
            .map(|i| format!("Line {i}: history reviewed, prior imaging compared; no change since last visit."))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let name = match n % 4 {
        0 => format!("{}, {}", family.to_uppercase(), given),
        1 => format!("{given} {family}"),
        2 => format!("  {family}, {given}  "),
        _ => format!("{family}^{given}"),
    };
    let mut a = json!({
        "domain": DEMO_DOMAIN,
        "appointmentId": id,
        "status": status,
        "scheduledSite": site,
        "appointmentDate": date,
        "startTime": start,
        "endTime": end,
        "patientId": format!("P{:07}", 2_000_000 + n * 37),
        "patientName": name,
        "studyDescription": study,
        "modality": modality,
        "clinicalInfo": clinical,
        "priority": PRIORITIES[n as usize % PRIORITIES.len()],
        "examCodes": [{"code": code, "description": study}],
    });
    let (title, first, last) = REFERRERS[(n as usize / 2) % REFERRERS.len()];
    match n % 3 {
        0 => {
            a["doctorName"] = json!(format!("{title} {first} {last}"));
            a["doctorFirstName"] = json!(first);
            a["doctorLastName"] = json!(last);
        }
        1 => a["doctorName"] = json!(format!("{title} {first} {last}")),
        _ => {
            a["doctorFirstName"] = json!(first);
            a["doctorLastName"] = json!(last);
        }
    }
    // Field names vary between QUBS views: both spellings occur.
    let dob = format!(
        "19{:02}-{:02}-{:02}",
        30 + rng.random_range(0..70),
        1 + rng.random_range(0..12),
        1 + rng.random_range(0..28)
    );
    match n % 5 {
        0 => a["dateOfBirth"] = json!(dob),
        1 => a["patientDateOfBirth"] = json!(dob),
        2 => a["dateOfBirth"] = json!(""),
        _ => a["dateOfBirth"] = json!(dob),
    }
    match n % 4 {
        0 => a["gender"] = json!("F"),
        1 => a["gender"] = json!("M"),
        2 => a["patientSex"] = json!("female"),
        _ => a["gender"] = json!(""),
    }
    let r = &RADIOLOGISTS[n as usize % RADIOLOGISTS.len()];
    match n % 6 {
        0 | 1 | 3 => {
            a["assignedRadiologist"] = json!({
                "userId": r.user_id,
                "fullName": format!("{} {} {}", r.title, r.given, r.family),
                "email": r.email,
                "providerNumber": r.provider_number,
            })
        }
        2 => {
            a["radiologist"] = json!({
                "userId": r.user_id,
                "firstName": r.given,
                "lastName": r.family,
                "email": r.email,
            })
        }
        _ => a["assignedRadiologist"] = Value::Null,
    }
    match n % 7 {
        0 | 3 => a["reportingDeadlineUtc"] = json!(format!("2026-11-{:02}T06:00:00Z", 3 + n % 25)),
        5 => a["reportingDeadline"] = json!(format!("2026-11-{:02}T22:30:00Z", 3 + n % 25)),
        _ => {}
    }
    a
}

fn comments(rng: &mut StdRng, appointment_id: &str, patient_id: &str) -> Vec<Value> {
    let count = rng.random_range(0..4);
    (0..count)
        .map(|_| {
            let (kind, text, alert) = *COMMENTS.choose(rng).expect("comments");
            let patient_level = kind.to_ascii_uppercase().starts_with('P');
            json!({
                "commentType": kind,
                "appointmentId": if patient_level { "" } else { appointment_id },
                "patientId": patient_id,
                "commentText": text,
                "commentDateTime": "2026-11-19T21:40:00Z",
                "isAlert": alert,
                "commentBy": {"userId": "u-3001"},
                "lastModifiedDateTime": "2026-11-19T21:40:00Z",
            })
        })
        .collect()
}

/// A small, valid one-page PDF naming the appointment (no patient data).
fn referral_pdf(appointment_id: &str) -> Bytes {
    let text = format!("Referral for appointment {appointment_id}");
    let stream = format!("BT /F1 18 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut pdf = String::from("%PDF-1.4\n");
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.push_str(&format!("{} 0 obj\n{body}\nendobj\n", i + 1));
    }
    let xref = pdf.len();
    pdf.push_str(&format!(
        "xref\n0 {}\n0000000000 65535 f \n",
        objects.len() + 1
    ));
    for o in offsets {
        pdf.push_str(&format!("{o:010} 00000 n \n"));
    }
    pdf.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    ));
    Bytes::from(pdf)
}

/// The demo patients as (family, given), for tests that check how their single-field
/// names were read.
pub fn demo_patients() -> &'static [(&'static str, &'static str)] {
    PATIENTS
}

/// The demo's referring doctors and radiologists as (title, given, family), for tests that
/// check how names were read.
pub fn demo_clinicians() -> Vec<(&'static str, &'static str, &'static str)> {
    REFERRERS
        .iter()
        .copied()
        .chain(RADIOLOGISTS.iter().map(|r| (r.title, r.given, r.family)))
        .collect()
}

/// Every patient name the demo data holds, in every spelling it uses, for tests that
/// assert none of them leaks into logs.
pub fn demo_patient_names() -> Vec<String> {
    PATIENTS
        .iter()
        .flat_map(|(family, given)| [family.to_string(), given.to_string()])
        // One- and two-character names ("王") would match unrelated text.
        .filter(|n| n.chars().count() >= 3)
        .collect()
}
