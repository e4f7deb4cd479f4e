//! The QUBS client against the embedded simulator over loopback HTTP.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{pending, start, with_pending};
use futures::{StreamExt, TryStreamExt};
use qubs_bridge::domain::{ReportStatus, ReportSubmission};
use qubs_bridge::qubs::{Disposition, ErrorKind, ProblemKind, ReportAttachmentFile};
use qubs_bridge::simulator::{Fault, FaultRule, Simulator};
use serde_json::{Map, json};

fn report(appointment_id: &str, text: &str, status: ReportStatus) -> ReportSubmission {
    ReportSubmission {
        domain: None,
        appointment_id: appointment_id.into(),
        report_text: text.into(),
        report_status: status,
        report_format: None,
        interpreting_clinician_name: Some("Dr Test".into()),
        interpreting_clinician_provider_number: Some("123456AB".into()),
        interpreting_clinician_email: None,
        reported_at_utc: Some("2026-11-27T01:02:03Z".parse().unwrap()),
    }
}

#[tokio::test]
async fn pages_over_three_pages_with_an_item_added_mid_iteration() {
    let f = start(with_pending(25), &[("QUBS_BRIDGE__QUBS__PAGE_SIZE", "10")]).await;
    let mut pages = Box::pin(f.client.pending_pages("acme"));
    let mut seen = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        page_count += 1;
        seen.extend(page.appointments.iter().map(|a| a.id().to_string()));
        if page_count == 1 {
            // Appears after the cursor (listed) and before it (not listed this round).
            f.sim.put_appointment("acme", pending("A9999"));
            f.sim.put_appointment("acme", pending("A0000"));
        }
    }
    assert_eq!(page_count, 3);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no appointment twice");
    for i in 1..=25 {
        assert!(seen.contains(&format!("A{i:04}")), "A{i:04} missing");
    }
    assert!(seen.contains(&"A9999".to_string()));
    let requests: Vec<_> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/pending"))
        .collect();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[0]
            .query
            .as_deref()
            .unwrap()
            .contains("pageSize=10")
    );
    assert!(!requests[0].query.as_deref().unwrap().contains("nextToken"));
    assert!(requests[1].query.as_deref().unwrap().contains("nextToken="));
}

#[tokio::test]
async fn pending_appointments_stream_flattens_pages() {
    let f = start(with_pending(7), &[("QUBS_BRIDGE__QUBS__PAGE_SIZE", "3")]).await;
    let ids: Vec<String> = f
        .client
        .pending_appointments("acme")
        .map_ok(|a| a.id().to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids.len(), 7);
}

#[tokio::test]
async fn token_is_renewed_before_it_expires() {
    let sim = with_pending(1);
    sim.set_token_lifetime(Duration::from_secs(2));
    let f = start(sim, &[]).await;
    f.client.appointment("acme", "A0001").await.unwrap();
    f.client.appointment("acme", "A0001").await.unwrap();
    assert_eq!(f.sim.token_requests(), 1, "a valid token is reused");
    // Renewal is due at half the lifetime (the margin is capped at lifetime / 2).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    f.client.appointment("acme", "A0001").await.unwrap();
    assert_eq!(f.sim.token_requests(), 2, "renewed before expiry");
    assert!(
        f.sim.requests().iter().all(|r| r.status != 401),
        "no request was sent with an expired token"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_calls_without_a_token_make_one_token_request() {
    let sim = with_pending(1);
    // Slow token endpoint, so that every call is waiting while the token is fetched.
    sim.add_fault(FaultRule::new(Fault::Latency { ms: 200 }).path("/oauth2/token"));
    let f = start(sim, &[]).await;
    let calls = (0..100).map(|_| f.client.appointment("acme", "A0001"));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(f.sim.token_requests(), 1);
    assert_eq!(f.client.tokens_fetched(), 1);
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_and_the_call_retried() {
    let f = start(with_pending(1), &[]).await;
    f.client.appointment("acme", "A0001").await.unwrap();
    f.sim.rotate_signing_key();
    f.sim.clear_requests();
    let a = f.client.appointment("acme", "A0001").await.unwrap();
    assert_eq!(a.id(), "A0001");
    assert_eq!(f.sim.token_requests(), 2);
    let log: Vec<_> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/appointments/"))
        .collect();
    assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), [401, 200]);
    assert_eq!(log[0].correlation_id, log[1].correlation_id);
}

#[tokio::test]
async fn a_second_401_is_an_error_not_a_loop() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 401,
            retry_after: None,
        })
        .path("/appointments/"),
    );
    let f = start(sim, &[]).await;
    let e = f.client.appointment("acme", "A0001").await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401));
    assert_eq!(e.problem().unwrap().kind(), ProblemKind::Unauthorized);
    assert_eq!(e.attempts, 2);
    assert_eq!(f.sim.token_requests(), 2);
}

#[tokio::test]
async fn a_foreign_domain_is_forbidden_with_request_id() {
    let sim = with_pending(1);
    sim.add_site("globex", "Other", "Europe/London");
    let f = start(sim, &[]).await;
    let e = f.client.sites("globex").await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403));
    let problem = e.problem().unwrap();
    assert_eq!(problem.kind(), ProblemKind::Forbidden);
    assert_eq!(
        problem.request_id.as_deref(),
        Some(e.correlation_id.to_string().as_str()),
        "requestId is the correlation id we sent"
    );
    // A fresh token first (it may carry the domain the old one lacked), then final.
    assert_eq!(e.attempts, 2, "a 403 is tried once more, with a new token");
    assert_eq!(f.sim.token_requests(), 2);
    assert!(e.to_string().contains("403 Forbidden"), "{e}");
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 429,
            retry_after: Some("1".into()),
        })
        .path("/appointments/")
        .times(1),
    );
    let f = start(sim, &[]).await;
    let started = Instant::now();
    f.client.appointment("acme", "A0001").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    let statuses: Vec<u16> = f
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/appointments/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 200]);
    let faults: Vec<Option<String>> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/appointments/"))
        .map(|r| r.fault)
        .collect();
    assert_eq!(
        faults,
        [Some("status".to_string()), None],
        "the injected 429 is named in the request log"
    );
}

#[tokio::test]
async fn too_many_requests_with_an_http_date() {
    let sim = with_pending(1);
    let when = std::time::SystemTime::now() + Duration::from_secs(2);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 429,
            retry_after: Some(httpdate::fmt_http_date(when)),
        })
        .path("/appointments/")
        .times(1),
    );
    let f = start(sim, &[]).await;
    let started = Instant::now();
    f.client.appointment("acme", "A0001").await.unwrap();
    // HTTP dates have one-second resolution.
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_503_burst_then_success() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 503,
            retry_after: None,
        })
        .path("/pending")
        .times(3),
    );
    let f = start(sim, &[]).await;
    let page = f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(page.appointments.len(), 1);
    let log: Vec<_> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/pending"))
        .collect();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    assert_eq!(
        log.iter().map(|r| r.fault.as_deref()).collect::<Vec<_>>(),
        [Some("status"), Some("status"), Some("status"), None],
        "injected statuses are named in the request log"
    );
    assert!(
        log.iter()
            .all(|r| r.correlation_id == log[0].correlation_id),
        "one correlation id across retries"
    );
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_the_last_error() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Raw {
            status: 502,
            content_type: "text/html".into(),
            body: "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
        })
        .path("/sites"),
    );
    let f = start(sim, &[("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS", "3")]).await;
    let e = f.client.sites("acme").await.unwrap_err();
    assert_eq!(e.attempts, 3);
    match &e.kind {
        ErrorKind::Status {
            status,
            content_type,
            excerpt,
        } => {
            assert_eq!(status.as_u16(), 502);
            assert_eq!(content_type.as_deref(), Some("text/html"));
            assert!(excerpt.contains("502 Bad Gateway"), "{excerpt}");
        }
        other => panic!("expected a non-problem status error, got {other:?}"),
    }
    assert!(e.to_string().contains("after 3 attempts"), "{e}");
}

#[tokio::test]
async fn retries_stop_when_the_time_budget_is_spent() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 503,
            retry_after: Some("5".into()),
        })
        .path("/sites"),
    );
    let f = start(sim, &[("QUBS_BRIDGE__QUBS__RETRY__MAX_ELAPSED_MS", "1000")]).await;
    let started = Instant::now();
    let e = f.client.sites("acme").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "did not wait past the budget"
    );
    assert_eq!(e.status().map(|s| s.as_u16()), Some(503));
    assert_eq!(e.retry_after, Some(Duration::from_secs(5)));
}

#[tokio::test]
async fn a_timed_out_get_is_retried() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Latency { ms: 2000 })
            .path("/appointments/")
            .times(1),
    );
    let f = start(sim, &[("QUBS_BRIDGE__QUBS__REQUEST_TIMEOUT_MS", "300")]).await;
    f.client.appointment("acme", "A0001").await.unwrap();
    let statuses: Vec<u16> = f
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/appointments/"))
        .map(|r| r.status)
        .collect();
    // The first attempt was abandoned unanswered (status 0), the retry answered.
    assert_eq!(statuses, [0, 200]);
}

#[tokio::test]
async fn a_report_post_retried_after_a_dropped_connection_creates_one_report() {
    let sim = with_pending(2);
    sim.add_fault(
        FaultRule::new(Fault::DropAfterProcessing)
            .method("POST")
            .path("/report")
            .times(1),
    );
    let f = start(sim, &[]).await;
    let receipt = f
        .client
        .submit_report(
            "acme",
            &report("A0001", "No acute findings.", ReportStatus::Final),
            Some("7f9c2b6e-0d7e-4c1e-9a53-2f2b8f3f8a10"),
        )
        .await
        .unwrap();
    assert_eq!(receipt.report_status.as_deref(), Some("final"));
    let posts: Vec<_> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/report"))
        .collect();
    let statuses: Vec<_> = posts.iter().map(|p| (p.status, p.fault.clone())).collect();
    assert_eq!(posts.len(), 2, "sent, dropped, sent again: {statuses:?}");
    assert_eq!(posts[0].fault.as_deref(), Some("drop_after_processing"));
    assert!(
        posts
            .iter()
            .all(|p| p.idempotency_key.as_deref() == Some("7f9c2b6e-0d7e-4c1e-9a53-2f2b8f3f8a10"))
    );
    let submissions = f.sim.submissions("acme");
    assert_eq!(submissions.len(), 1, "exactly one report");
    let stored = f.sim.report("acme", "A0001").unwrap();
    assert_eq!(stored.report_guid, receipt.report_guid);
    assert_eq!(stored.revision, 1);
}

#[tokio::test]
async fn a_report_post_without_a_key_is_never_retried() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 503,
            retry_after: None,
        })
        .method("POST")
        .path("/report")
        .times(1),
    );
    let f = start(sim, &[]).await;
    let e = f
        .client
        .submit_report(
            "acme",
            &report("A0001", "x", ReportStatus::Preliminary),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(503));
    assert_eq!(e.attempts, 1);
    assert_eq!(
        f.sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/report"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_reused_key_with_another_payload_is_a_typed_conflict() {
    let f = start(with_pending(1), &[]).await;
    let key = "k-conflict-1";
    let first = f
        .client
        .submit_report(
            "acme",
            &report("A0001", "first", ReportStatus::Preliminary),
            Some(key),
        )
        .await
        .unwrap();
    let replay = f
        .client
        .submit_report(
            "acme",
            &report("A0001", "first", ReportStatus::Preliminary),
            Some(key),
        )
        .await
        .unwrap();
    assert_eq!(
        first, replay,
        "same key + same payload = the original answer"
    );
    let e = f
        .client
        .submit_report(
            "acme",
            &report("A0001", "second", ReportStatus::Final),
            Some(key),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(409));
    assert_eq!(e.problem().unwrap().kind(), ProblemKind::Conflict);
    assert!(!e.is_transient());
    assert_eq!(e.attempts, 1);
    assert_eq!(f.sim.submissions("acme").len(), 1);
}

#[tokio::test]
async fn a_report_for_an_appointment_not_pending_is_not_found() {
    let sim = with_pending(1);
    sim.set_appointment_status("acme", "A0001", "FINALISED");
    let f = start(sim, &[]).await;
    let e = f
        .client
        .submit_report(
            "acme",
            &report("A0001", "x", ReportStatus::Final),
            Some("k-404"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.problem().unwrap().kind(), ProblemKind::NotFound);
    assert!(e.to_string().contains("PENDING REPORTING"), "{e}");
}

#[tokio::test]
async fn oversize_report_text_is_refused_before_sending() {
    let f = start(with_pending(1), &[]).await;
    let text = "a".repeat(qubs_bridge::qubs::MAX_REPORT_TEXT_BYTES + 1);
    let e = f
        .client
        .submit_report(
            "acme",
            &report("A0001", &text, ReportStatus::Final),
            Some("k"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)));
    assert!(e.to_string().contains("2097152"), "{e}");
    assert!(
        f.sim
            .requests()
            .iter()
            .all(|r| !r.path.ends_with("/report"))
    );
}

/// A token straight from the simulator's token endpoint (the whole JSON answer).
async fn sim_token(http: &reqwest::Client, token_url: &str) -> serde_json::Value {
    http.post(token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", common::CLIENT_ID),
            ("client_secret", common::CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_simulator_enforces_the_report_rules_over_http() {
    // Straight HTTP, bypassing the client's own checks.
    let f = start(with_pending(1), &[]).await;
    let http = reqwest::Client::new();
    let token = sim_token(&http, &f.sim.token_url()).await;
    let bearer = token["access_token"].as_str().unwrap().to_string();
    let url = format!(
        "{}/acme/reporting/appointments/A0001/report",
        f.sim.base_url()
    );
    let post = |body: serde_json::Value| {
        http.post(&url)
            .bearer_auth(&bearer)
            .header("X-Correlation-Id", "corr-1")
            .json(&body)
            .send()
    };
    let big = "é".repeat(qubs_bridge::qubs::MAX_REPORT_TEXT_BYTES / 2 + 1);
    let r = post(json!({"reportText": big, "reportStatus": "final"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-correlation-id"], "corr-1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "urn:qubs:integrations:bad-request");
    assert_eq!(body["requestId"], "corr-1");
    let r = post(json!({"reportText": "x", "reportStatus": "Preliminary"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = post(json!({"reportStatus": "final"})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{}/acme/sites", f.sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn the_simulator_control_endpoints_put_appointments_and_expire_tokens() {
    // What a load driver does to a simulator in another process: over HTTP only.
    let f = start(with_pending(1), &[]).await;
    let http = reqwest::Client::new();
    let control = format!("http://{}/_simulator", f.sim.addr);
    let put = |body: serde_json::Value| {
        http.put(format!("{control}/appointments/acme"))
            .json(&body)
            .send()
    };
    assert_eq!(put(pending("A0002")).await.unwrap().status(), 204);
    let mut changed = pending("A0001");
    changed["clinicalInfo"] = json!("revision 2");
    assert_eq!(put(changed).await.unwrap().status(), 204);
    let r = put(json!({"status": "PENDING REPORTING"})).await.unwrap();
    assert_eq!(r.status(), 400, "no appointmentId");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let page = f.client.pending_page("acme", None, None).await.unwrap();
    let ids: Vec<&str> = page.appointments.iter().map(|a| a.id()).collect();
    assert_eq!(ids, ["A0001", "A0002"]);
    assert_eq!(
        f.sim
            .with_domain("acme", |d| d.appointments["A0001"]["clinicalInfo"].clone()),
        "revision 2"
    );

    let r = http
        .put(format!("{control}/token-lifetime"))
        .json(&json!({"seconds": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let issued = sim_token(&http, &f.sim.token_url()).await;
    assert_eq!(issued["expires_in"], 7);
    let sites = format!("{}/acme/sites", f.sim.base_url());
    let bearer = issued["access_token"].as_str().unwrap().to_string();
    let status = |bearer: String| {
        let http = http.clone();
        let sites = sites.clone();
        async move {
            http.get(sites)
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(bearer.clone()).await, 200);
    let r = http
        .post(format!("{control}/rotate-signing-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        status(bearer).await,
        401,
        "tokens issued before the rotation"
    );
    // The client re-authenticates once and carries on.
    assert_eq!(
        f.client
            .pending_page("acme", None, None)
            .await
            .unwrap()
            .appointments
            .len(),
        2
    );
}

#[tokio::test]
async fn a_malformed_item_is_skipped_and_reported() {
    let sim = with_pending(3);
    sim.put_raw_item(
        "acme",
        "A0001x",
        json!({"status": "PENDING REPORTING", "patientName": "No Id"}),
    );
    sim.put_raw_item(
        "acme",
        "A0002x",
        json!({"appointmentId": {"nested": true}, "status": "PENDING REPORTING"}),
    );
    let f = start(sim, &[]).await;
    let page = f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(page.appointments.len(), 3);
    assert_eq!(page.skipped.len(), 2);
    assert_eq!(page.skipped[0].reason, "appointmentId is missing");
    assert_eq!(
        page.skipped[1].reason,
        "appointmentId must be a string, found an object"
    );
    assert!(!page.skipped[0].to_string().contains("No Id"));
}

#[tokio::test]
async fn unknown_fields_are_kept_and_missing_ones_are_null() {
    let sim = with_pending(0);
    sim.put_appointment(
        "acme",
        json!({"appointmentId": "A1", "status": "PENDING REPORTING", "futureField": {"x": [1, 2]}}),
    );
    let f = start(sim, &[]).await;
    let a = f.client.appointment("acme", "A1").await.unwrap();
    assert_eq!(a.fields()["futureField"]["x"][1], 2);
    assert_eq!(a.str_field("patientName"), None);
}

#[tokio::test]
async fn malformed_json_is_a_decode_error_naming_the_position() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::MalformedJson)
            .path("/pending")
            .times(1),
    );
    let f = start(sim, &[]).await;
    let e = f.client.pending_page("acme", None, None).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Decode(_)), "{e:?}");
    assert!(e.to_string().contains("malformed JSON"), "{e}");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[tokio::test]
async fn a_slow_body_still_arrives() {
    let sim = with_pending(5);
    sim.add_fault(
        FaultRule::new(Fault::SlowBody {
            chunk_bytes: 64,
            delay_ms: 5,
        })
        .path("/pending")
        .times(1),
    );
    let f = start(sim, &[]).await;
    let page = f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(page.appointments.len(), 5);
}

#[tokio::test]
async fn comments_and_alerts() {
    let sim = with_pending(1);
    sim.add_comment(
        "acme",
        "A0001",
        json!({"guid": "c1", "commentType": "AA", "commentText": "alert", "isAlert": true}),
    );
    sim.add_comment(
        "acme",
        "A0001",
        json!({"guid": "c2", "commentType": "PC", "appointmentId": "", "commentText": "patient"}),
    );
    sim.add_comment(
        "acme",
        "A0001",
        json!({"guid": "c3", "isAlert": "not a bool"}),
    );
    let f = start(sim, &[]).await;
    let list = f.client.comments("acme", "A0001").await.unwrap();
    assert_eq!(list.len(), 2, "the malformed one is skipped");
    assert!(list[0].is_alert());
    assert!(!list[1].is_alert());
    let one = f.client.comment("acme", "A0001", "c2").await.unwrap();
    assert_eq!(one.comment_text.as_deref(), Some("patient"));
    let e = f.client.comment("acme", "A0001", "nope").await.unwrap_err();
    assert_eq!(e.problem().unwrap().kind(), ProblemKind::NotFound);
}

#[tokio::test]
async fn site_settings_are_cached_and_time_zones_resolved() {
    let sim = with_pending(0);
    sim.add_site("acme", "Kowhai Medical Imaging", "Pacific/Auckland");
    sim.add_site("acme", "Broken", "Mars/Olympus_Mons");
    let f = start(sim, &[]).await;
    let sites = f.client.sites("acme").await.unwrap();
    assert_eq!(sites.len(), 3);
    let tz = f
        .client
        .site_time_zone("acme", "Kowhai Medical Imaging")
        .await
        .unwrap();
    assert_eq!(tz.iana_name(), Some("Pacific/Auckland"));
    f.client
        .site_time_zone("acme", "Kowhai Medical Imaging")
        .await
        .unwrap();
    let fetched = f
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/sites/Kowhai%20Medical%20Imaging"))
        .count();
    assert_eq!(fetched, 1, "second lookup served from the cache");
    let e = f.client.site_time_zone("acme", "Broken").await.unwrap_err();
    assert!(e.to_string().contains("not an IANA time zone"), "{e}");
}

#[tokio::test]
async fn attachments_download_as_a_stream_and_urls_expire() {
    let sim = with_pending(1);
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut meta = Map::new();
    meta.insert("guid".into(), json!("att-1"));
    meta.insert("category".into(), json!("Referral"));
    meta.insert("fileName".into(), json!("referral.pdf"));
    sim.add_attachment(
        "acme",
        "A0001",
        meta,
        "application/pdf",
        Bytes::from(content.clone()),
    );
    let f = start(sim, &[("QUBS_BRIDGE__QUBS__ATTACHMENT_URL_TTL_SECS", "1")]).await;
    let list = f
        .client
        .attachments("acme", "A0001", Disposition::Attachment)
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let query = f.sim.requests().last().unwrap().query.clone().unwrap();
    assert!(
        query.contains("urlTtlSeconds=1") && query.contains("disposition=attachment"),
        "{query}"
    );
    let download = f.client.download_attachment(&list[0]).await.unwrap();
    assert_eq!(download.content_type.as_deref(), Some("application/pdf"));
    assert_eq!(download.content_length, Some(300_000));
    let chunks: Vec<Bytes> = download.chunks.try_collect().await.unwrap();
    assert!(chunks.len() > 1, "arrived in several chunks");
    assert_eq!(chunks.concat(), content);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = f.client.download_attachment(&list[0]).await.err().unwrap();
    assert!(e.to_string().contains("expired"), "{e}");
    // Asked anyway, the simulator refuses the expired URL.
    let e = f
        .client
        .download(list[0].url.as_deref().unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403));
    // A fresh URL works again.
    let again = f
        .client
        .attachment("acme", "A0001", "att-1", Disposition::Inline)
        .await
        .unwrap();
    assert!(f.client.download_attachment(&again).await.is_ok());
}

#[tokio::test]
async fn report_attachments_register_and_upload() {
    let f = start(with_pending(1), &[]).await;
    let pdf = Bytes::from_static(b"%PDF-1.4\n%test\n");
    let uploads = f
        .client
        .register_report_attachments(
            "acme",
            "A0001",
            &[ReportAttachmentFile {
                file_name: "report.pdf".into(),
                content_type: "application/pdf".into(),
                size_bytes: pdf.len() as u64,
            }],
            Some("att-key-1"),
        )
        .await
        .unwrap();
    assert_eq!(uploads.len(), 1);
    f.client
        .upload_report_attachment(&uploads[0], "application/pdf", pdf.clone())
        .await
        .unwrap();
    let stored = f.sim.with_domain("acme", |d| {
        d.report_attachments[&uploads[0].attachment_guid]
            .content
            .clone()
    });
    assert_eq!(stored, Some(pdf));
    let too_big = Bytes::from(vec![0u8; 2 * 1024 * 1024 + 1]);
    let e = f
        .client
        .upload_report_attachment(&uploads[0], "application/pdf", too_big)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)));
}

#[tokio::test]
async fn wrong_client_secret_is_a_clear_token_error() {
    let sim = with_pending(1);
    let f = start(
        sim,
        &[("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "Zq8-not-the-secret")],
    )
    .await;
    let e = f.client.appointment("acme", "A0001").await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Token { .. }), "{e:?}");
    assert!(e.to_string().contains("invalid_client"), "{e}");
    assert!(
        !e.to_string().contains("Zq8-not-the-secret"),
        "the secret is not echoed: {e}"
    );
    assert_eq!(e.attempts, 1, "refused credentials are not retried");
}

#[tokio::test]
async fn demo_data_has_the_promised_shape() {
    let f = start(Simulator::demo(), &[]).await;
    let sites = f.client.sites("acme").await.unwrap();
    assert!(sites.len() >= 3);
    let mut zones = HashSet::new();
    for s in &sites {
        zones.insert(
            f.client
                .site_time_zone("acme", &s.site_name)
                .await
                .unwrap()
                .iana_name()
                .map(str::to_string),
        );
    }
    assert!(zones.len() >= 3, "sites in different time zones");
    let pending: Vec<_> = f
        .client
        .pending_appointments("acme")
        .try_collect()
        .await
        .unwrap();
    assert!(
        pending.len() >= 24,
        "dozens of appointments: {}",
        pending.len()
    );
    let text = |field: &str| {
        pending
            .iter()
            .filter_map(|a| a.str_field(field).map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert!(text("clinicalInfo").iter().any(|t| t.contains('|')
        && t.contains('^')
        && t.contains('~')
        && t.contains('\\')
        && t.contains('&')));
    assert!(text("clinicalInfo").iter().any(|t| t.len() > 5000));
    assert!(text("priority").iter().any(|p| p == "routine"));
    assert!(text("priority").iter().any(|p| p.is_empty()));
    assert!(text("patientName").iter().any(|n| !n.is_ascii()));
    let mut alerts = 0;
    let mut attachments = 0;
    for a in pending.iter().take(12) {
        alerts += f
            .client
            .comments("acme", a.id())
            .await
            .unwrap()
            .iter()
            .filter(|c| c.is_alert())
            .count();
        attachments += f
            .client
            .attachments("acme", a.id(), Disposition::Inline)
            .await
            .unwrap()
            .len();
    }
    assert!(alerts > 0 && attachments > 0);
}

// ---- what QUBS does not document: settings and fallbacks ------------------------------------

/// A client for `sim` (already started) with its settings changed by `tweak`.
fn client_with(
    sim: &qubs_bridge::simulator::RunningSimulator,
    env: &[(&str, &str)],
    tweak: impl FnOnce(&mut qubs_bridge::config::QubsSettings),
) -> qubs_bridge::qubs::Client {
    let mut settings = common::settings_for(sim, env);
    tweak(&mut settings);
    qubs_bridge::qubs::Client::new(&settings).unwrap()
}

#[tokio::test]
async fn the_token_request_follows_qubs_auth_settings() {
    let sim = with_pending(1);
    sim.set_client_auth(qubs_bridge::simulator::ClientAuth::Basic);
    sim.require_token_params(Some("integrations.read"), Some("https://api.qubs.test"));
    let f = start(
        sim,
        &[
            ("QUBS_BRIDGE__QUBS__AUTH__METHOD", "client_secret_basic"),
            ("QUBS_BRIDGE__QUBS__AUTH__SCOPE", "integrations.read"),
            ("QUBS_BRIDGE__QUBS__AUTH__AUDIENCE", "https://api.qubs.test"),
        ],
    )
    .await;
    f.client.pending_page("acme", None, None).await.unwrap();
    // Credentials in the body, where the token endpoint wants HTTP Basic: refused, said so.
    let in_body = client_with(&f.sim, &[], |s| {
        s.auth.scope = Some("integrations.read".into());
        s.auth.audience = Some("https://api.qubs.test".into());
    });
    let e = in_body.pending_page("acme", None, None).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Token { .. }), "{e:?}");
    assert!(e.to_string().contains("must come as HTTP Basic"), "{e}");
    // No scope where one is required.
    let no_scope = client_with(
        &f.sim,
        &[("QUBS_BRIDGE__QUBS__AUTH__METHOD", "client_secret_basic")],
        |_| {},
    );
    let e = no_scope.pending_page("acme", None, None).await.unwrap_err();
    assert!(e.to_string().contains("invalid_scope"), "{e}");
    // Body only, as a server that refuses Basic wants it.
    f.sim
        .set_client_auth(qubs_bridge::simulator::ClientAuth::Post);
    f.sim.require_token_params(None, None);
    let basic = client_with(
        &f.sim,
        &[("QUBS_BRIDGE__QUBS__AUTH__METHOD", "client_secret_basic")],
        |_| {},
    );
    let e = basic.pending_page("acme", None, None).await.unwrap_err();
    assert!(e.to_string().contains("must come in the form body"), "{e}");
    let post = client_with(&f.sim, &[], |_| {});
    post.pending_page("acme", None, None).await.unwrap();
}

#[tokio::test]
async fn without_expires_in_the_token_lives_until_its_exp() {
    let sim = with_pending(1);
    sim.set_strict_docs(true);
    sim.set_token_lifetime(Duration::from_secs(2));
    let f = start(sim, &[]).await;
    let http = reqwest::Client::new();
    let answer = sim_token(&http, &f.sim.token_url()).await;
    assert!(answer.get("expires_in").is_none(), "{answer}");
    assert_eq!(f.sim.token_requests(), 1);
    f.client.pending_page("acme", None, None).await.unwrap();
    f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(f.sim.token_requests(), 2, "one token, reused");
    // Renewed at half of what `exp` says (2 s), not after the one-hour default.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(f.sim.token_requests(), 3, "renewed before exp");
    assert!(f.sim.requests().iter().all(|r| r.status != 401));
}

#[tokio::test]
async fn a_500_is_transient_for_a_get() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 500,
            retry_after: None,
        })
        .path("/pending")
        .times(2),
    );
    let f = start(sim, &[]).await;
    let page = f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(page.appointments.len(), 1);
    let statuses: Vec<u16> = f
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/pending"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
}

#[tokio::test]
async fn a_403_gets_one_fresh_token_and_the_call_goes_on() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 403,
            retry_after: None,
        })
        .path("/pending")
        .times(1),
    );
    let f = start(sim, &[]).await;
    f.client.pending_page("acme", None, None).await.unwrap();
    assert_eq!(f.sim.token_requests(), 2, "a new token after the 403");
    let log: Vec<_> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/pending"))
        .collect();
    assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), [403, 200]);
    assert_eq!(log[0].correlation_id, log[1].correlation_id);
}

#[tokio::test]
async fn the_strict_simulator_serves_only_what_qubs_documents() {
    let sim = with_pending(23);
    sim.set_appointment_status("acme", "A0005", "FINALISED");
    sim.add_comment("acme", "A0005", json!({"guid": "c1", "commentType": "AC"}));
    sim.add_comment("acme", "A0006", json!({"guid": "c2", "commentType": "AC"}));
    sim.set_strict_docs(true);
    let f = start(sim, &[("QUBS_BRIDGE__QUBS__PAGE_SIZE", "6")]).await;
    let status = |e: qubs_bridge::qubs::Error| e.status().map(|s| s.as_u16());
    // Nothing the documentation does not describe.
    assert_eq!(
        status(f.client.appointment("acme", "A0001").await.unwrap_err()),
        Some(404)
    );
    assert_eq!(status(f.client.sites("acme").await.unwrap_err()), Some(404));
    let file = ReportAttachmentFile {
        file_name: "r.pdf".into(),
        content_type: "application/pdf".into(),
        size_bytes: 3,
    };
    let e = f
        .client
        .register_report_attachments("acme", "A0001", &[file], Some("k"))
        .await
        .unwrap_err();
    assert_eq!(status(e), Some(404));
    // Comments "for the requested pending reporting appointment" only.
    assert_eq!(f.client.comments("acme", "A0006").await.unwrap().len(), 1);
    let e = f.client.comments("acme", "A0005").await.unwrap_err();
    assert_eq!(status(e), Some(404));
    let e = f
        .client
        .attachments("acme", "A0005", Disposition::Inline)
        .await
        .unwrap_err();
    assert_eq!(status(e), Some(404));
    // DynamoDB-style pages: the limit counts what was read before the filter (A0005 is
    // read, not listed), an empty page carries a token, and every pending one comes once.
    let pages: Vec<_> = f.client.pending_pages("acme").try_collect().await.unwrap();
    let sizes: Vec<usize> = pages.iter().map(|p| p.appointments.len()).collect();
    assert_eq!(sizes, [5, 0, 3, 6, 0, 3, 5], "{sizes:?}");
    assert!(
        pages[1].next_token.is_some(),
        "an empty page that carries a token"
    );
    let ids: HashSet<String> = pages
        .iter()
        .flat_map(|p| p.appointments.iter().map(|a| a.id().to_string()))
        .collect();
    assert_eq!(ids.len(), 22);
    assert!(!ids.contains("A0005"));
}

#[tokio::test]
async fn a_duplicate_still_in_progress_is_a_conflict_and_its_replay_comes_later() {
    let sim = with_pending(1);
    sim.add_fault(
        FaultRule::new(Fault::SlowProcessing { ms: 1500 })
            .method("POST")
            .path("/report")
            .times(1),
    );
    let f = start(
        sim,
        &[
            ("QUBS_BRIDGE__QUBS__REQUEST_TIMEOUT_MS", "300"),
            ("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let key = "k-in-progress";
    let submission = report("A0001", "x", ReportStatus::Final);
    let e = f
        .client
        .submit_report("acme", &submission, Some(key))
        .await
        .unwrap_err();
    // The first attempt timed out while QUBS was still at it; the retry met it.
    assert_eq!(e.status().map(|s| s.as_u16()), Some(409), "{e}");
    assert!(e.to_string().contains("still being processed"), "{e}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let receipt = f
        .client
        .submit_report("acme", &submission, Some(key))
        .await
        .unwrap();
    assert_eq!(
        receipt.report_guid,
        f.sim.report("acme", "A0001").unwrap().report_guid
    );
    assert_eq!(f.sim.submissions("acme").len(), 1, "stored once");
}

#[tokio::test]
async fn site_time_zones_come_from_configuration_the_endpoint_and_the_default() {
    let sim = with_pending(0);
    sim.add_site("acme", "Kowhai Medical Imaging", "Pacific/Auckland");
    sim.add_site("acme", "Harbour Imaging", "Australia/Sydney");
    let f = start(sim, &[]).await;
    let zone = |s: Option<qubs_bridge::qubs::SiteSettings>| s.and_then(|s| s.time_zone);
    let client = client_with(&f.sim, &[], |s| {
        s.site_time_zones
            .insert("Harbour Imaging".into(), "Australia/Perth".into());
        s.default_time_zone = Some(qubs_bridge::config::DefaultTimeZone::All("UTC".into()));
    });
    // Configuration wins; the endpoint knows the rest; the default covers unknown sites.
    let site = |name: &'static str| client.site_for("acme", Some(name));
    assert_eq!(
        zone(site("Harbour Imaging").await.unwrap()).as_deref(),
        Some("Australia/Perth")
    );
    assert_eq!(
        zone(site("Kowhai Medical Imaging").await.unwrap()).as_deref(),
        Some("Pacific/Auckland")
    );
    assert_eq!(zone(site("Nowhere").await.unwrap()).as_deref(), Some("UTC"));
    assert_eq!(
        zone(client.site_for("acme", None).await.unwrap()).as_deref(),
        Some("UTC")
    );
    assert_eq!(
        client.time_zone_source("acme"),
        qubs_bridge::qubs::TimeZoneSource::SitesEndpoint
    );
    // Without a sites endpoint: one look at the list, then configuration alone.
    f.sim.set_strict_docs(true);
    f.sim.clear_requests();
    let client = client_with(&f.sim, &[], |s| {
        s.default_time_zone = Some(qubs_bridge::config::DefaultTimeZone::PerDomain(
            [("acme".to_string(), "Australia/Sydney".to_string())].into(),
        ));
    });
    for _ in 0..3 {
        let s = client
            .site_for("acme", Some("Kowhai Medical Imaging"))
            .await
            .unwrap();
        assert_eq!(zone(s).as_deref(), Some("Australia/Sydney"));
    }
    let asked: Vec<String> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/sites"))
        .map(|r| r.path)
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(
        client.time_zone_source("acme"),
        qubs_bridge::qubs::TimeZoneSource::ConfigurationEndpointMissing
    );
    // Another shape than assumed: configuration stands in, nothing fails.
    f.sim.set_strict_docs(false);
    f.sim.add_fault(
        FaultRule::new(Fault::Raw {
            status: 200,
            content_type: "application/json".into(),
            body: r#"{"siteName": "Kowhai Medical Imaging", "timeZone": {"iana": "Pacific/Auckland"}}"#.into(),
        })
        .path("/sites/Kowhai"),
    );
    let client = client_with(&f.sim, &[], |s| {
        s.default_time_zone = Some(qubs_bridge::config::DefaultTimeZone::All("UTC".into()));
    });
    let s = client
        .site_for("acme", Some("Kowhai Medical Imaging"))
        .await
        .unwrap();
    assert_eq!(zone(s).as_deref(), Some("UTC"));
    f.sim.clear_faults();
    // Off by configuration: never asked.
    f.sim.clear_requests();
    let client = client_with(
        &f.sim,
        &[("QUBS_BRIDGE__QUBS__SITES__ENDPOINT", "false")],
        |_| {},
    );
    assert_eq!(
        zone(client.site_for("acme", Some("Main")).await.unwrap()),
        None
    );
    assert!(f.sim.requests().is_empty());
}
