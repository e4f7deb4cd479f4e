//! The ACK layout of every HL7 v2 version a sender may speak, judged by hl7apy (an
//! independent implementation of the standard's structures, in a Python venv set up by
//! `tests/python/setup_venv.py`): each segment of each ACK parsed with strict validation in
//! the version of its MSH-12. Before v2.5, ERR-1 is a CM/ELD of four components
//! (segment ID ^ sequence ^ field position ^ code identifying error), the code a CE whose
//! code, text and coding system are subcomponents; from v2.5, ERR-2 (ERL), ERR-3 (CWE),
//! ERR-4 and ERR-8.

use crate::common;

use std::time::Duration;

use common::{pending, start_bridge};
use qubs_bridge::hl7::ack::{self, AckCode, AckError, ErrorCode, IncomingHeader};
use qubs_bridge::mllp::MllpClient;
use qubs_bridge::simulator::Simulator;
use serde_json::{Value, json};

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/data/hl7/{name}")).unwrap()
}

fn oru(version: &str, control_id: &str, appointment: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01|{control_id}|P|{version}\r\
         PID|1||P1^^^acme^MR\rORC|RE|{appointment}\r\
         OBR|1|{appointment}||CT^CT|||20261127090000|||||||||||||||202611270930|||F\r\
         OBX|1|TX|||Report text||||||F\r"
    )
    .into_bytes()
}

/// What hl7apy read from each ACK (one JSON object per file).
fn read_with_hl7apy(acks: &[(String, String)]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = acks
        .iter()
        .enumerate()
        .map(|(i, (_, ack))| {
            let path = dir.path().join(format!("ack-{i}.hl7"));
            std::fs::write(&path, ack).unwrap();
            path.to_str().unwrap().to_string()
        })
        .collect();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = common::python::run("ack_layout.py", &args);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// ERR-1 as hl7apy names it: `ELD_n` from v2.3.1, `CM_ELD_n` in v2.3.
fn err1(read: &Value) -> Value {
    let e = &read["ERR"]["ERR_1"];
    let get = |n: u8| {
        e.get(format!("ELD_{n}"))
            .or_else(|| e.get(format!("CM_ELD_{n}")))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!([get(1), get(2), get(3), get(4)])
}

#[tokio::test]
async fn acks_to_older_senders_carry_err1_as_the_standard_lays_it_out() {
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    sim.put_appointment("acme", pending("78043150"));
    let bridge = start_bridge(sim, &[]).await;
    let addr = bridge.service.mllp_addr.expect("MLLP enabled");

    // Real ACKs from the listener, one connection per message (enhanced-mode senders get a
    // second ACK on theirs).
    let mut acks = Vec::new();
    for (name, message) in [
        (
            "v2.2 lab ORU, unknown appointment in group 2",
            sample("mirth-oru-r01-lab-multi-obr.hl7"),
        ),
        (
            "v2.3 ORM (not results)",
            sample("nodehl7-orm-o01-xray-ankle.hl7"),
        ),
        (
            "v2.3 lab ORU, no report text",
            sample("hl7parser-oru-r01-lab-escapes.hl7"),
        ),
        (
            "v2.3.1 ORU, unknown appointment",
            oru("2.3.1", "V231", "A404"),
        ),
        (
            "v2.4 glucose ORU, no report text",
            sample("msfhirconv-oru-r01-glucose.hl7"),
        ),
        (
            "v2.5.1 ORU, unknown appointment",
            oru("2.5.1", "V251", "A404"),
        ),
    ] {
        let mut client = MllpClient::connect(addr, None, Duration::from_secs(5))
            .await
            .unwrap();
        let ack = client
            .call(&message, Duration::from_secs(30))
            .await
            .unwrap();
        acks.push((name.to_string(), String::from_utf8(ack.to_vec()).unwrap()));
    }
    // And from the builder, without a location (ERR-1's first three components empty).
    let now: jiff::ZonedDateTime = "2026-11-27T10:00:00+11:00[Australia/Sydney]"
        .parse()
        .unwrap();
    for version in ["2.3", "2.3.1", "2.4"] {
        let header =
            IncomingHeader::recover(&String::from_utf8(oru(version, "NOLOC", "A1")).unwrap());
        let error = AckError {
            code: ErrorCode::ApplicationInternalError,
            location: None,
            text: "stored, not confirmed yet".into(),
        };
        acks.push((
            format!("v{version} built, no location"),
            ack::build(&header, AckCode::AE, Some(&error), &now),
        ));
    }

    let read = read_with_hl7apy(&acks);
    assert_eq!(read.len(), acks.len());
    let mut failures = Vec::new();
    for ((name, ack), r) in acks.iter().zip(&read) {
        if r["valid"] != true {
            failures.push(format!("{name}: {}\n  {ack:?}", r["error"]));
        }
    }
    assert!(
        failures.is_empty(),
        "hl7apy refused:\n{}",
        failures.join("\n")
    );

    let code = |c: &str, text: &str| json!({"CE_1": c, "CE_2": text, "CE_3": "HL70357"});
    let expected = [
        (
            "2.2",
            json!(["OBR", "2", "2", code("204", "Unknown key identifier")]),
        ),
        (
            "2.3",
            json!(["", "", "", code("200", "Unsupported message type")]),
        ),
        (
            "2.3",
            json!(["OBX", "1", "5", code("101", "Required field missing")]),
        ),
        (
            "2.3.1",
            json!(["OBR", "1", "2", code("204", "Unknown key identifier")]),
        ),
        (
            "2.4",
            json!(["OBX", "1", "5", code("101", "Required field missing")]),
        ),
    ];
    for (i, (version, want)) in expected.iter().enumerate() {
        let (name, ack) = &acks[i];
        assert_eq!(read[i]["version"], *version, "{name}");
        assert_eq!(
            read[i]["segments"],
            json!(["MSH", "MSA", "ERR"]),
            "{name}: {ack:?}"
        );
        // Components hl7apy leaves out are empty.
        let got: Vec<Value> = err1(&read[i])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| if v.is_null() { json!("") } else { v.clone() })
            .collect();
        assert_eq!(Value::Array(got), *want, "{name}: {ack:?}");
        // Before v2.5 the text goes in MSA-3.
        assert!(
            !read[i]["MSA"]["MSA_3"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{name}: {}",
            read[i]["MSA"]
        );
    }
    // v2.5.1: ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 text; no ERR-1.
    let v25 = &read[5];
    assert_eq!(
        v25["ERR"]["ERR_2"],
        json!({"ERL_1": "OBR", "ERL_2": "1", "ERL_3": "2"})
    );
    assert_eq!(
        v25["ERR"]["ERR_3"],
        json!({"CWE_1": "204", "CWE_2": "Unknown key identifier", "CWE_3": "HL70357"})
    );
    assert_eq!(v25["ERR"]["ERR_4"], "E");
    assert!(v25["ERR"].get("ERR_1").is_none(), "{v25}");
    // Built without a location: only the code, in the fourth component.
    for r in &read[6..] {
        let e = err1(r);
        assert_eq!(e[0], Value::Null, "{r}");
        assert_eq!(e[3], code("207", "Application internal error"), "{r}");
    }
}
