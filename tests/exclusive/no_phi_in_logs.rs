//! PHI and secrets never reach the logs: a full client flow against the demo data, error
//! paths included, with every log level on, searched for patient data and the secret.

use crate::common;

use futures::TryStreamExt;
use qubs_bridge::domain::{ReportStatus, ReportSubmission};
use qubs_bridge::qubs::Disposition;
use qubs_bridge::simulator::{Fault, FaultRule, Simulator, demo_patient_names};
use serde_json::{Value, json};

/// Every string value under the given keys, anywhere in `v`.
fn strings_under(v: &Value, keys: &[&str], out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if keys.contains(&k.as_str())
                    && let Value::String(s) = child
                    && s.trim().len() >= 6
                {
                    out.push(s.trim().to_string());
                }
                strings_under(child, keys, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| strings_under(c, keys, out)),
        _ => {}
    }
}

#[tokio::test]
async fn a_full_demo_flow_logs_no_phi_and_no_secret() {
    let logs_turn = common::logs::exclusive("trace");
    let capture = &logs_turn.capture;

    let sim = Simulator::demo();
    // Malformed items carrying PHI in the wrong places: skipped, and reported without it.
    sim.put_raw_item(
        "acme",
        "A999998",
        json!({"status": "PENDING REPORTING", "patientName": "Bartholomew Quince"}),
    );
    sim.add_comment(
        "acme",
        "A100001",
        json!({"guid": "bad", "isAlert": "Philippa Wrexham-Stoat"}),
    );
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 503,
            retry_after: Some("0".into()),
        })
        .path("/comments")
        .times(2),
    );
    let f = common::start(sim, &[]).await;

    let appointments: Vec<_> = f
        .client
        .pending_appointments("acme")
        .try_collect()
        .await
        .unwrap();
    let mut report_texts = Vec::new();
    for a in &appointments {
        f.client.appointment("acme", a.id()).await.unwrap();
        f.client.comments("acme", a.id()).await.unwrap();
        for att in f
            .client
            .attachments("acme", a.id(), Disposition::Inline)
            .await
            .unwrap()
        {
            let download = f.client.download_attachment(&att).await.unwrap();
            let _: Vec<_> = download.chunks.try_collect().await.unwrap();
        }
    }
    for site in f.client.sites("acme").await.unwrap() {
        f.client
            .site_time_zone("acme", &site.site_name)
            .await
            .unwrap();
    }
    let first = appointments[0].id().to_string();
    let text = "FINDINGS: Zoë Ångström's left knee shows a tear. IMPRESSION: Horace Pemberton-Blythe follow-up.";
    report_texts.push(text.to_string());
    let mut report = ReportSubmission {
        domain: None,
        appointment_id: first.clone(),
        report_text: text.into(),
        report_status: ReportStatus::Final,
        report_format: None,
        interpreting_clinician_name: Some("Dr Cordelia Finchley".into()),
        interpreting_clinician_provider_number: None,
        interpreting_clinician_email: Some("cordelia.finchley@example.test".into()),
        reported_at_utc: None,
    };
    f.client
        .submit_report("acme", &report, Some("phi-key-1"))
        .await
        .unwrap();
    report.report_text = "Different text for Octavia Wrenfield".into();
    report_texts.push(report.report_text.clone());
    let conflict = f
        .client
        .submit_report("acme", &report, Some("phi-key-1"))
        .await
        .unwrap_err();
    tracing::error!(error = %conflict, "report refused");
    let not_pending = f.sim.with_domain("acme", |d| {
        d.appointments
            .iter()
            .find(|(_, a)| a["status"] != "PENDING REPORTING")
            .map(|(id, _)| id.clone())
            .unwrap()
    });
    report.appointment_id = not_pending;
    let e = f
        .client
        .submit_report("acme", &report, Some("phi-key-2"))
        .await
        .unwrap_err();
    tracing::error!(error = %e, "report refused");
    tracing::debug!(?report, appointment = ?appointments[0], "debug output of PHI-bearing types");

    let logs = capture.text();
    assert!(logs.contains("QUBS answered"), "debug logs were captured");
    assert!(
        logs.contains("skipped a malformed"),
        "malformed items were reported"
    );
    assert!(logs.contains("retrying"), "retries were logged");

    let mut forbidden: Vec<String> = demo_patient_names();
    f.sim.with_domain("acme", |d| {
        for a in d.appointments.values() {
            strings_under(
                a,
                &[
                    "patientName",
                    "clinicalInfo",
                    "dateOfBirth",
                    "patientDateOfBirth",
                ],
                &mut forbidden,
            );
        }
        for list in d.comments.values() {
            for c in list {
                strings_under(c, &["commentText"], &mut forbidden);
            }
        }
    });
    forbidden.extend(report_texts);
    forbidden.extend(
        [
            "Bartholomew Quince",
            "Philippa Wrexham-Stoat",
            "Cordelia Finchley",
            "cordelia.finchley@example.test",
            common::CLIENT_SECRET,
        ]
        .map(String::from),
    );
    assert!(
        forbidden.len() > 60,
        "the search covers the data: {}",
        forbidden.len()
    );
    for s in &forbidden {
        assert!(!logs.contains(s.as_str()), "logged PHI or a secret: {s:?}");
    }
    if let Some(i) = logs.find("eyJ") {
        panic!(
            "JWT logged: {}",
            &logs[i.saturating_sub(300)..(i + 100).min(logs.len())]
        );
    }
}
