//! ACK conformance: for every sample message in `tests/data/hl7/` and for each error class,
//! the exact MSA and ERR the sender gets — over MLLP, the way feeds send results.
//!
//! Layout reminders: from v2.5 the ERR carries ERR-2 location, ERR-3 the table 0357 code,
//! ERR-4 severity and ERR-8 the text; before v2.5 it is ERR-1, four components
//! (`segment^sequence^field^code&text&HL70357`), and the text goes in MSA-3. In enhanced mode (MSH-15/16 set) the first answer is the
//! commit ACK (CA/CE/CR).

use crate::common;

use std::time::Duration;

use base64::Engine;
use common::{Bridge, pending, start_bridge};
use qubs_bridge::mllp::MllpClient;
use qubs_bridge::simulator::Simulator;

/// What a message must be answered with: MSA exactly (or, with `…`, up to there), ERR
/// exactly (empty: none) or up to `…`.
struct Case {
    name: &'static str,
    message: Vec<u8>,
    msa: &'static str,
    err: &'static str,
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/hl7/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn oru(control_id: &str, appointment: &str, status: &str, text: &str) -> Vec<u8> {
    [
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1"),
        "PID|1||P1^^^acme^MR".into(),
        format!("ORC|RE|{appointment}"),
        format!(
            "OBR|1|{appointment}||CT^CT|||20261127090000|||||||||||||||202611270930|||{status}"
        ),
        format!("OBX|1|TX|||{text}||||||F"),
    ]
    .join("\r")
    .into_bytes()
}

fn matches(actual: &str, expected: &str) -> bool {
    match expected.strip_suffix('…') {
        Some(prefix) => actual.starts_with(prefix),
        None => actual == expected,
    }
}

async fn bridge() -> Bridge {
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for id in [
        "PlacerOrderNumberImagingServiceRequest",
        "PON_0d70c6c8",
        "78043150",
        "A1",
        "A2",
    ] {
        sim.put_appointment("acme", pending(id));
    }
    sim.put_appointment("acme", {
        let mut a = pending("A3");
        a["status"] = "REPORTED".into();
        a
    });
    start_bridge(sim, &[]).await
}

async fn check(bridge: &Bridge, cases: Vec<Case>) {
    let addr = bridge.service.mllp_addr.expect("MLLP enabled");
    let mut client = MllpClient::connect(addr, None, Duration::from_secs(5))
        .await
        .unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let ack = client
            .call(&case.message, Duration::from_secs(30))
            .await
            .unwrap();
        let ack = String::from_utf8_lossy(&ack).to_string();
        let segment = |id: &str| {
            ack.split('\r')
                .find(|s| s.starts_with(id))
                .unwrap_or_default()
                .to_string()
        };
        let (msa, err) = (segment("MSA|"), segment("ERR|"));
        assert!(ack.starts_with("MSH|"), "{}: not an ACK: {ack}", case.name);
        if !matches(&msa, case.msa) || !matches(&err, case.err) {
            failures.push(format!(
                "{}:\n  MSA {msa}\n  want {}\n  ERR {err}\n  want {}",
                case.name, case.msa, case.err
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn every_sample_message_gets_the_promised_ack() {
    let bridge = bridge().await;
    let unsupported = |name, msa| Case {
        name,
        message: sample(name),
        msa,
        err: "ERR|||200^Unsupported message type^HL70357|E||||message type …",
    };
    check(
        &bridge,
        vec![
            // Imaging results whose appointment is pending: accepted.
            Case {
                name: "dcm4che-oru-r01-cda.hl7",
                message: sample("dcm4che-oru-r01-cda.hl7"),
                msa: "MSA|AA|1001127",
                err: "",
            },
            Case {
                name: "dcm4che-oru-r01-pdf.hl7",
                message: sample("dcm4che-oru-r01-pdf.hl7"),
                msa: "MSA|AA|1001128",
                err: "",
            },
            Case {
                name: "dcm4che-oru-r01-sr-findings.hl7",
                message: sample("dcm4che-oru-r01-sr-findings.hl7"),
                msa: "MSA|AA|1001129",
                err: "",
            },
            Case {
                name: "lfh-oru-r01-imaging-multiline.hl7",
                message: sample("lfh-oru-r01-imaging-multiline.hl7"),
                msa: "MSA|AA|MSGID00231",
                err: "",
            },
            // Not results: rejected (enhanced mode: commit reject), code 200.
            unsupported("dcm4che-omi-o23-imaging-order.hl7", "MSA|AR|1001125"),
            unsupported("dcm4che-orm-o01-general-order.hl7", "MSA|AR|1001126"),
            unsupported("dcm4che-siu-s12-appointment.hl7", "MSA|AR|1001127"),
            unsupported("msfhirconv-orm-o01-ct-head.hl7", "MSA|AR|MSG00018"),
            unsupported("msfhirconv-orm-o01-two-orders.hl7", "MSA|AR|MSG00018"),
            Case {
                name: "hl7dotnetcore-orm-o01-escapes.hl7 (v2.3, enhanced)",
                message: sample("hl7dotnetcore-orm-o01-escapes.hl7"),
                msa: "MSA|CR|3149|message type ORM\\S\\O01 is not accepted here; send ORU\\S\\R01",
                err: "ERR|^^^200&Unsupported message type&HL70357",
            },
            Case {
                name: "mirth-orm-o01-mri.hl7 (v2.3, enhanced)",
                message: sample("mirth-orm-o01-mri.hl7"),
                msa: "MSA|CR|12345678|message type ORM\\S\\O01 is not accepted here; send ORU\\S\\R01",
                err: "ERR|^^^200&Unsupported message type&HL70357",
            },
            Case {
                name: "nodehl7-orm-o01-xray-ankle.hl7 (v2.3)",
                message: sample("nodehl7-orm-o01-xray-ankle.hl7"),
                msa: "MSA|AR|497|message type ORM\\S\\O01 is not accepted here; send ORU\\S\\R01",
                err: "ERR|^^^200&Unsupported message type&HL70357",
            },
            // Laboratory results with numeric values only: no report text (101 at OBX-5).
            Case {
                name: "hl7parser-oru-r01-lab-escapes.hl7 (v2.3, enhanced)",
                message: sample("hl7parser-oru-r01-lab-escapes.hl7"),
                // Before v2.5 the text is cut to MSA-3's 80 characters.
                msa: "MSA|CE|3216598|message 3216598, order group 1: oru_to_report.yaml:43:5 (target `reportText`)...",
                err: "ERR|OBX^1^5^101&Required field missing&HL70357",
            },
            Case {
                name: "msfhirconv-oru-r01-glucose.hl7 (v2.4)",
                message: sample("msfhirconv-oru-r01-glucose.hl7"),
                msa: "MSA|AE|CNTRL-3456|message CNTRL-3456, order group 1: oru_to_report.yaml:43:5 (target `reportTex...",
                err: "ERR|OBX^1^5^101&Required field missing&HL70357",
            },
            // Its one text-bearing observation is coded (CWE) and read as its text: stored,
            // so the commit ACK accepts it (QUBS answers for the appointment later).
            Case {
                name: "msfhirconv-oru-r01-kitchen-sink.hl7 (enhanced)",
                message: sample("msfhirconv-oru-r01-kitchen-sink.hl7"),
                msa: "MSA|CA|2.16.840.1.114222.4.3.3.5.1.2-20120314235954.325",
                err: "",
            },
            Case {
                name: "msfhirconv-oru-r01-lab-two-obr-partial.hl7",
                message: sample("msfhirconv-oru-r01-lab-two-obr-partial.hl7"),
                msa: "MSA|AE|182",
                err: "ERR||OBX^1^5|101^Required field missing^HL70357|E||||message 182, order group 1: …",
            },
            Case {
                name: "nodehl7-oru-r01-nist-lead.hl7",
                message: sample("nodehl7-oru-r01-nist-lead.hl7"),
                msa: "MSA|AE|NIST-100929110701660",
                err: "ERR||OBX^1^5|101^Required field missing^HL70357|E||||message NIST-100929110701660, order group 1: …",
            },
            // The result status sits one field late (OBR-26): OBR-25 is missing.
            Case {
                name: "msfhirconv-oru-r01-lab-two-obr-final.hl7 (shifted OBR-25)",
                message: sample("msfhirconv-oru-r01-lab-two-obr-final.hl7"),
                msa: "MSA|AE|ControlID",
                err: "ERR||OBR^1^25|101^Required field missing^HL70357|E||||message ControlID, order group 1: oru_to_report.yaml:32:5 (target `reportStatus`): required value is missing (looked at: OBR-25 \\F\\ OBX[OBX-2 in (TX, FT, ST, CE, CWE) and OBX-11 not in (W, D)]-11)",
            },
            // Appointments QUBS does not know.
            Case {
                name: "nodehl7-oru-r01-cerner-elr.hl7",
                message: sample("nodehl7-oru-r01-cerner-elr.hl7"),
                msa: "MSA|AE|201010010913000771",
                err: "ERR||OBR^1^2|204^Unknown key identifier^HL70357|E||||appointment 2010273000016 is unknown to QUBS or not pending reporting: …",
            },
            // v2.2: text in MSA-3. Group 1 (78043150) is pending, group 2's appointment
            // (from OBR-3, `1`) is not known.
            Case {
                name: "mirth-oru-r01-lab-multi-obr.hl7 (v2.2)",
                message: sample("mirth-oru-r01-lab-multi-obr.hl7"),
                msa: "MSA|AE|1275709644085|appointment 1 is unknown to QUBS or not pending reporting: …",
                err: "ERR|OBR^2^2^204&Unknown key identifier&HL70357",
            },
        ],
    )
    .await;
    // The PDF of the dcm4che sample became a report attachment.
    let pdfs = bridge.sim.with_domain("acme", |d| {
        d.report_attachments
            .values()
            .filter(|a| a.appointment_id == "PlacerOrderNumberImagingServiceRequest")
            .filter_map(|a| a.content.clone())
            .collect::<Vec<_>>()
    });
    assert_eq!(pdfs.len(), 1);
    assert!(pdfs[0].starts_with(b"%PDF-"));
}

#[tokio::test]
async fn each_error_class_gets_its_code_location_and_text() {
    let bridge = bridge().await;
    let big_text = "x".repeat(2_097_153);
    let not_pdf = base64::engine::general_purpose::STANDARD.encode(b"plain text");
    let mut pdf_not_pdf = oru("E8", "A2", "F", "Report.");
    pdf_not_pdf.extend_from_slice(
        format!("\rOBX|2|ED|18748-4^Report^LN||^AP^PDF^Base64^{not_pdf}||||||F").as_bytes(),
    );
    check(
        &bridge,
        vec![
            Case {
                name: "binary junk, no MSH",
                message: b"\x00\x01\x02 hello there \xff\xfe".to_vec(),
                msa: "MSA|AR|",
                err: "ERR|||100^Segment sequence error^HL70357|E||||no readable MSH segment: this is not an HL7 v2 message",
            },
            Case {
                name: "ORU with an unknown trigger",
                message: String::from_utf8(oru("E1", "A1", "F", "t"))
                    .unwrap()
                    .replace("ORU^R01^ORU_R01", "ORU^R30")
                    .into_bytes(),
                msa: "MSA|AR|E1",
                err: "ERR|||201^Unsupported event code^HL70357|E||||message type ORU\\S\\R30 is not accepted here; send ORU\\S\\R01",
            },
            Case {
                name: "no appointment id anywhere",
                message: String::from_utf8(oru("E2", "", "F", "t"))
                    .unwrap()
                    .into_bytes(),
                msa: "MSA|AE|E2",
                err: "ERR||OBR^1^2|101^Required field missing^HL70357|E||||message E2, order group 1: …",
            },
            Case {
                name: "result status that maps to nothing",
                message: oru("E3", "A1", "X", "t"),
                msa: "MSA|AE|E3",
                err: "ERR||OBR^1^25|103^Table value not found^HL70357|E||||…",
            },
            Case {
                name: "unknown appointment",
                message: oru("E4", "A404", "F", "t"),
                msa: "MSA|AE|E4",
                err: "ERR||OBR^1^2|204^Unknown key identifier^HL70357|E||||appointment A404 is unknown to QUBS or not pending reporting: …",
            },
            Case {
                // Without the (undocumented) single-appointment GET, QUBS's documented
                // answer does not tell "not pending" from "unknown".
                name: "appointment not pending reporting",
                message: oru("E5", "A3", "F", "t"),
                msa: "MSA|AE|E5",
                err: "ERR||OBR^1^2|204^Unknown key identifier^HL70357|E||||appointment A3 is unknown to QUBS or not pending reporting: …",
            },
            Case {
                name: "report text over 2,097,152 bytes",
                message: oru("E6", "A1", "F", &big_text),
                msa: "MSA|AE|E6",
                err: "ERR||OBX^1^5|207^Application internal error^HL70357|E||||…",
            },
            Case {
                name: "accepted final",
                message: oru("E7", "A1", "F", "IMPRESSION: normal."),
                msa: "MSA|AA|E7",
                err: "",
            },
            Case {
                name: "preliminary after that final",
                message: oru("E7P", "A1", "P", "IMPRESSION: normal?"),
                msa: "MSA|AE|E7P",
                err: "ERR||OBR^1^25|207^Application internal error^HL70357|E||||appointment A1 already has a final report (outbox entry …",
            },
            Case {
                name: "OBX ED that says PDF but is not",
                message: pdf_not_pdf,
                msa: "MSA|AE|E8",
                err: "ERR||OBX^2^5|102^Data type error^HL70357|E||||OBX 2: OBX-5 says PDF but the data does not start with %PDF-",
            },
            Case {
                name: "retransmission of the accepted final",
                message: oru("E7", "A1", "F", "IMPRESSION: normal."),
                msa: "MSA|AA|E7",
                err: "",
            },
        ],
    )
    .await;
    assert_eq!(bridge.sim.submissions("acme").len(), 1);
}
