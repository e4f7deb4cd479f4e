//! The web console's JSON API and pages over real sockets: sign-in, sessions, CSRF and
//! roles on every route, the operations an operator runs (find a dead letter by appointment
//! or message id, retry, purge) with their audit entries, the mapping playground (runs,
//! drafts, golden cases, the trace and the input fields each rule reads, a case's output
//! accepted as its expectation, a result from the outbox as input), re-sending changed
//! orders after a promotion, and `serve --demo`'s sign-in line. The browser tests are in
//! `console_browser`.

use crate::common;

use std::time::Duration;

use common::{Bridge, GRPC_TOKEN, authed, start_bridge_with, with_pending};
use qubs_bridge::console::{ConsoleUser, ROUTES, Role};
use qubs_bridge::grpc::auth::hash_token;
use qubs_bridge::grpc::pb::SubmitOruRequest;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const VIEWER: &str = "viewer-token-7f1c";
pub const ANALYST: &str = "analyst-token-2b8e";
pub const OPERATOR: &str = "operator-token-9d4a";
/// Every role.
pub const ADMIN: &str = "admin-token-4e6f";

fn user(name: &str, token: &str, roles: &[Role]) -> ConsoleUser {
    ConsoleUser {
        name: name.into(),
        token_sha256: Some(hash_token(token)),
        roles: roles.to_vec(),
        domains: Vec::new(),
    }
}

/// A bridge with one console user per role (results acknowledged once stored, retried fast).
pub(crate) async fn bridge_with_console(idle_timeout_secs: u64) -> Bridge {
    bridge_with(idle_timeout_secs, |_| {}).await
}

/// As [`bridge_with_console`], with a last say over the settings.
pub(crate) async fn bridge_with(
    idle_timeout_secs: u64,
    tweak: impl FnOnce(&mut qubs_bridge::config::Settings),
) -> Bridge {
    start_bridge_with(
        with_pending(1),
        &[
            ("QUBS_BRIDGE__RESULTS__ACK_MODE", "after_store"),
            ("QUBS_BRIDGE__RESULTS__RETRY_INITIAL_MS", "50"),
            ("QUBS_BRIDGE__RESULTS__RETRY_MAX_MS", "200"),
            ("QUBS_BRIDGE__MAPPINGS__WATCH", "false"),
        ],
        |s| {
            s.console.session_idle_timeout_secs = idle_timeout_secs;
            s.console.users = vec![
                user("vera", VIEWER, &[Role::Viewer]),
                user("ana", ANALYST, &[Role::Analyst]),
                user("otto", OPERATOR, &[Role::Operator]),
                user("root", ADMIN, &[Role::Analyst, Role::Operator]),
            ];
            tweak(s);
        },
    )
    .await
}

/// `http://ADMIN/console/api/<path>`.
fn url(bridge: &Bridge, path: &str) -> String {
    format!("http://{}/console/{path}", bridge.service.admin_addr)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Calls the API with a bearer token; returns the status and the JSON body.
async fn call(bridge: &Bridge, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let c = http();
    let url = url(bridge, &format!("api/{path}"));
    let request = match method {
        "GET" => c.get(url),
        _ => c.post(url).json(&body),
    };
    let response = request.bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A route's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.trim_start_matches("/console/")
        .replace("{id}", "1")
        .replace("{destination}", "nowhere")
}

#[tokio::test]
async fn every_api_route_refuses_without_credentials_and_below_its_role() {
    let bridge = bridge_with_console(600).await;
    let c = http();
    assert!(ROUTES.len() >= 15, "{} routes", ROUTES.len());
    for route in ROUTES {
        let path = concrete(route.path);
        let u = format!("http://{}/console/{path}", bridge.service.admin_addr);
        let send = |token: Option<&str>| {
            let r = if route.method == "GET" {
                c.get(&u)
            } else {
                c.post(&u).json(&json!({}))
            };
            match token {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
            .send()
        };
        let Some(role) = route.role else {
            continue;
        };
        let anonymous = send(None).await.unwrap();
        assert_eq!(
            anonymous.status(),
            401,
            "{} {path} without credentials",
            route.method
        );
        assert!(anonymous.headers().contains_key("www-authenticate"));
        let unknown = send(Some("not-a-token")).await.unwrap();
        assert_eq!(
            unknown.status(),
            401,
            "{} {path} with an unknown token",
            route.method
        );
        // A user with every other role but this one is refused.
        let lower = match role {
            Role::Viewer => None,
            Role::Analyst => Some(OPERATOR),
            Role::Operator => Some(ANALYST),
        };
        if let Some(token) = lower {
            let refused = send(Some(token)).await.unwrap();
            assert_eq!(
                refused.status(),
                403,
                "{} {path} below {role:?}",
                route.method
            );
            let body: Value = refused.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains(role.as_str()),
                "{body}"
            );
        }
        // With the role, the guard lets it through (to a real answer or a handler's 4xx).
        let token = match role {
            Role::Viewer => VIEWER,
            Role::Analyst => ANALYST,
            Role::Operator => OPERATOR,
        };
        let allowed = send(Some(token)).await.unwrap().status();
        assert!(
            ![401, 403, 415].contains(&allowed.as_u16()),
            "{} {path} with {role:?}: {allowed}",
            route.method
        );
    }
    let (status, _) = call(&bridge, "GET", "nothing-here", ADMIN, Value::Null).await;
    assert_eq!(status, 404);
}

/// Signs in with `token`; returns the cookie pair (`qb_console=...`), the Set-Cookie line
/// and the CSRF token.
async fn sign_in(bridge: &Bridge, token: &str) -> (String, String, String) {
    let response = http()
        .post(url(bridge, "api/login"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    let pair = set_cookie.split(';').next().unwrap().to_string();
    (pair, set_cookie, body["csrf"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_session_is_a_secure_http_only_cookie_and_its_state_changes_need_the_csrf_token() {
    let bridge = bridge_with_console(600).await;
    let c = http();
    // A wrong token signs nobody in, and the attempt is audited (without the token).
    let refused = c
        .post(url(&bridge, "api/login"))
        .json(&json!({"token": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    // A sign-in posted as a form (what a foreign page can send) is refused.
    let form = c
        .post(url(&bridge, "api/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={OPERATOR}"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);

    let (cookie, set_cookie, csrf) = sign_in(&bridge, OPERATOR).await;
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let session: Value = c
        .get(url(&bridge, "api/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["user"], "otto");
    assert_eq!(session["roles"], json!(["viewer", "operator"]));
    assert_eq!(session["csrf"], csrf.as_str());

    let retry = |csrf: Option<&str>, json: bool| {
        let mut r = c
            .post(url(&bridge, "api/outbox/retry"))
            .header("cookie", &cookie);
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        if json {
            r.json(&json!({"allDead": true}))
        } else {
            r.header("content-type", "text/plain")
                .body(r#"{"allDead": true}"#)
        }
    };
    assert_eq!(retry(None, true).send().await.unwrap().status(), 403);
    assert_eq!(
        retry(Some("forged"), true).send().await.unwrap().status(),
        403
    );
    assert_eq!(
        retry(Some(&csrf), false).send().await.unwrap().status(),
        415
    );
    let done = retry(Some(&csrf), true).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(done.json::<Value>().await.unwrap()["requeued"], 0);

    // Signing out ends the session and clears the cookie.
    let out = c
        .post(url(&bridge, "api/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = c
        .get(url(&bridge, "api/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);

    let (_, audit) = call(&bridge, "GET", "audit", VIEWER, Value::Null).await;
    let actions: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |u: &str, a: &str, o: &str| (u.to_string(), a.to_string(), o.to_string());
    assert_eq!(
        actions,
        vec![
            expect("otto", "logout", "ok"),
            expect("otto", "outbox.retry", "ok"),
            expect("otto", "login", "ok"),
            expect("(unknown)", "login", "refused: unknown token"),
        ]
    );
    let text = audit.to_string();
    assert!(
        !text.contains("guess") && !text.contains(OPERATOR),
        "{text}"
    );
}

#[tokio::test]
async fn an_idle_session_times_out() {
    let bridge = bridge_with_console(1).await;
    let (cookie, set_cookie, _) = sign_in(&bridge, VIEWER).await;
    assert!(set_cookie.contains("HttpOnly"));
    let session = |cookie: String| {
        let u = url(&bridge, "api/session");
        async move {
            http()
                .get(u)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(session(cookie.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(session(cookie).await, 401);
}

/// An ORU^R01 for `appointment` with MSH-10 `control_id`.
fn oru(control_id: &str, appointment: &str) -> String {
    [
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1"),
        "PID|1||P1^^^acme^MR||Citizen^Jane".to_string(),
        format!("ORC|RE|{appointment}"),
        format!(
            "OBR|1|{appointment}||CTHEAD^CT Head|||20261127090000|||||||||||||||202611270930|||F"
        ),
        "OBX|1|TX|||IMPRESSION: Normal study.||||||F".to_string(),
    ]
    .join("\r")
}

#[tokio::test]
async fn an_operator_finds_a_dead_letter_by_appointment_or_message_id_retries_and_purges_it() {
    let bridge = bridge_with_console(600).await;
    let mut results = ResultServiceClient::new(bridge.channel().await);
    // Unknown to QUBS: stored, then a dead letter.
    let answer = results
        .submit_oru(authed(
            SubmitOruRequest {
                message: oru("CONSOLE-MSG-1", "A0404").into_bytes(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.ack_code, "AA");
    let id = answer.reports[0].outbox_id;
    let started = std::time::Instant::now();
    loop {
        let (_, entry) = call(&bridge, "GET", &format!("outbox/{id}"), VIEWER, Value::Null).await;
        if entry["state"] == "dead" {
            assert_eq!(entry["errorKind"], "not_found");
            assert!(
                entry["lastError"].as_str().unwrap().contains("A0404"),
                "{entry}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never dead: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Found by appointment id and by MSH-10; a viewer sees it (ids and reasons, no report).
    for q in ["A0404", "CONSOLE-MSG-1"] {
        let (status, found) = call(
            &bridge,
            "GET",
            &format!("outbox?q={q}&state=dead"),
            VIEWER,
            Value::Null,
        )
        .await;
        assert_eq!(status, 200);
        let entries = found["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{q}: {found}");
        assert_eq!(entries[0]["id"], id);
        assert_eq!(entries[0]["sourceId"], "CONSOLE-MSG-1");
        assert!(
            !found.to_string().contains("Citizen"),
            "no patient data: {found}"
        );
    }
    let (_, none) = call(&bridge, "GET", "outbox?q=A9999", VIEWER, Value::Null).await;
    assert_eq!(none["entries"], json!([]));
    let (status, _) = call(&bridge, "GET", "outbox?state=lost", VIEWER, Value::Null).await;
    assert_eq!(status, 400);

    // The appointment appears in QUBS; the operator retries the dead letter by id.
    bridge.sim.put_appointment("acme", common::pending("A0404"));
    let (status, body) = call(
        &bridge,
        "POST",
        "outbox/retry",
        OPERATOR,
        json!({"ids": [id]}),
    )
    .await;
    assert_eq!((status, body["requeued"].clone()), (200, json!(1)));
    common::eventually(
        "the retried report reaches QUBS",
        Duration::from_secs(20),
        || bridge.sim.report("acme", "A0404").is_some(),
    )
    .await;
    let (status, body) = call(
        &bridge,
        "POST",
        "outbox/purge",
        OPERATOR,
        json!({"state": "pending", "olderThanHours": 0}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    common::eventually("the entry is submitted", Duration::from_secs(20), || {
        bridge.sim.report("acme", "A0404").is_some()
    })
    .await;
    let purged = loop {
        let (_, b) = call(
            &bridge,
            "POST",
            "outbox/purge",
            OPERATOR,
            json!({"state": "submitted", "olderThanHours": 0}),
        )
        .await;
        if b["purged"] == 1 || started.elapsed() > Duration::from_secs(20) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(purged["purged"], 1);
    let (status, _) = call(&bridge, "GET", &format!("outbox/{id}"), VIEWER, Value::Null).await;
    assert_eq!(status, 404);

    let (_, audit) = call(&bridge, "GET", "audit", VIEWER, Value::Null).await;
    let entries = audit["entries"].as_array().unwrap();
    let retry = entries
        .iter()
        .find(|e| e["action"] == "outbox.retry")
        .expect("the retry is audited");
    assert_eq!(retry["user"], "otto");
    assert_eq!(retry["via"], "token");
    assert_eq!(retry["target"], format!("outbox {id}"));
    assert_eq!(retry["detail"], "requeued 1");
    assert!(retry["atMs"].as_i64().unwrap() > 0);
    let purge = entries
        .iter()
        .find(|e| e["action"] == "outbox.purge" && e["detail"] == "purged 1")
        .expect("the purge is audited");
    assert_eq!(purge["target"], "submitted older than 0 h");
}

#[tokio::test]
async fn the_overview_and_charts_show_counts_without_patient_data() {
    let bridge = bridge_with_console(600).await;
    let (status, o) = call(&bridge, "GET", "overview", VIEWER, Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(o["outbox"]["pending"], 0);
    assert_eq!(o["outbox"]["dead"], 0);
    assert_eq!(o["feed"]["enabled"], false);
    assert!(
        o["mappings"]["version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{o}"
    );
    assert!(
        o["mappings"]["names"]
            .as_array()
            .unwrap()
            .contains(&json!("orm_o01"))
    );
    let (status, live) = call(&bridge, "GET", "live", VIEWER, Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(live["intervalSecs"], 5);
    assert!(live["points"].is_array());
    // Feed retries on a bridge without a feed say so.
    let (status, body) = call(&bridge, "POST", "feed/x/retry", OPERATOR, json!({})).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn pages_and_assets_come_from_the_binary_under_a_strict_policy() {
    let bridge = bridge_with_console(600).await;
    let c = http();
    // Without a session the page sends the browser to the sign-in page.
    let page = c.get(url(&bridge, "")).send().await.unwrap();
    assert!(page.status().is_redirection(), "{}", page.status());
    assert_eq!(page.headers()["location"], "/console/login");
    let login = c.get(url(&bridge, "login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(login.text().await.unwrap().contains("login.js"));
    let (cookie, _, _) = sign_in(&bridge, VIEWER).await;
    let page = c
        .get(url(&bridge, ""))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("/console/assets/js/app.js")
    );
    for asset in qubs_bridge::console::assets::ASSETS {
        if asset.name.ends_with(".html") {
            continue;
        }
        let r = c
            .get(url(&bridge, &format!("assets/{}", asset.name)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", asset.name);
        assert_eq!(r.headers()["content-type"], asset.content_type);
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let body = r.text().await.unwrap();
        // Nothing is fetched from anywhere else (the SVG namespace is a name, not a fetch).
        let outside = body
            .replace("http://www.w3.org/2000/svg", "")
            .contains("://");
        assert!(!outside, "{} refers to another site", asset.name);
        let again = c
            .get(url(&bridge, &format!("assets/{}", asset.name)))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", asset.name);
    }
    let missing = c
        .get(url(&bridge, "assets/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The admin endpoint's own pages are as they were.
    assert_eq!(bridge.admin_text("/healthz").await, "ok\n");
    assert!(
        bridge
            .admin_text("/metrics")
            .await
            .contains("results_stored")
    );
}

/// The `order-routine-ct` golden case's order.
fn routine_ct() -> String {
    std::fs::read_to_string("mappings/tests/order-routine-ct/order.json").unwrap()
}

fn field<'a>(er7: &'a str, segment: &str, index: usize) -> &'a str {
    er7.split(['\r', '\n'])
        .find(|s| s.starts_with(segment))
        .and_then(|s| s.split('|').nth(index))
        .unwrap_or_default()
}

#[tokio::test]
async fn the_playground_runs_mappings_drafts_and_golden_cases() {
    let bridge = bridge_with_console(600).await;
    let (status, m) = call(&bridge, "GET", "mappings", ANALYST, Value::Null).await;
    assert_eq!(status, 200);
    let orm = m["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "orm_o01")
        .unwrap()
        .clone();
    assert_eq!(orm["input"], "order");
    assert_eq!(orm["file"], "orm_o01.yaml");
    let text = orm["text"].as_str().unwrap().to_string();
    assert_eq!(
        text,
        std::fs::read_to_string("mappings/orm_o01.yaml").unwrap()
    );

    let (_, cases) = call(&bridge, "GET", "cases", ANALYST, Value::Null).await;
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "order-routine-ct")
        .unwrap()
        .clone();
    assert_eq!(case["kind"], "order");
    assert_eq!(case["input"], routine_ct());
    assert!(
        case["mappings"]
            .as_array()
            .unwrap()
            .contains(&json!("orm_o01"))
    );

    // The live mapping: "Urgent - same day" is HL7 priority A in ORC-7.6.
    let run = |draft: Option<String>| {
        let mut body = json!({"mapping": "orm_o01", "input": routine_ct()});
        if let Some(t) = draft {
            body["draft"] = json!({"file": "orm_o01.yaml", "text": t});
        }
        call(&bridge, "POST", "preview", ANALYST, body)
    };
    let (status, live) = run(None).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["errors"], json!([]));
    let output = live["output"].as_str().unwrap();
    assert_eq!(
        field(output, "ORC", 7).split('^').nth(5),
        Some("A"),
        "{output}"
    );
    assert!(live["unreadFields"].is_array());
    // The run's trace: ORC-7.6 came from the priority rule through its table, as written.
    let orc7 = live["trace"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["target"] == "ORC-7.6")
        .unwrap_or_else(|| panic!("no ORC-7.6 in the trace: {}", live["trace"]));
    assert_eq!(orc7["value"], "A", "{orc7}");
    assert!(
        orc7["rule"].as_str().unwrap().contains("orm_o01.yaml:"),
        "{orc7}"
    );
    // Where each input field goes, from the rules (what `mappings fields` prints).
    let priority = live["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "appointment.priority")
        .expect("appointment.priority is listed");
    assert_eq!(priority["fate"], "sent");
    assert!(
        priority["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("ORC-7")),
        "{priority}"
    );
    assert_eq!(live["version"], m["version"]);

    // A draft sets ORC-7.6 to a constant: the output changes, the files do not.
    let rule = "      - target: ORC-7.6\n        from: appointment.priority\n        filters: [trim, {table: priority}, {table: hl7_priority}]\n";
    assert!(text.contains(rule));
    let drafted = text.replace(rule, "      - target: ORC-7.6\n        value: S\n");
    let (status, draft) = run(Some(drafted.clone())).await;
    assert_eq!(status, 200, "{draft}");
    let output = draft["output"].as_str().unwrap();
    assert_eq!(
        field(output, "ORC", 7).split('^').nth(5),
        Some("S"),
        "{output}"
    );
    assert_ne!(draft["version"], live["version"]);
    assert_eq!(
        std::fs::read_to_string("mappings/orm_o01.yaml").unwrap(),
        text
    );

    // A broken draft answers the checks' diagnostics at file:line:col.
    let broken = text.replace(
        rule,
        "      - target: ORC-7.6\n        frm: appointment.priority\n",
    );
    let (status, bad) = run(Some(broken.clone())).await;
    assert_eq!(status, 422, "{bad}");
    let d = &bad["diagnostics"][0];
    assert_eq!(d["file"], "orm_o01.yaml");
    let line = broken
        .lines()
        .position(|l| l.contains("frm: appointment.priority"))
        .unwrap()
        + 1;
    let reported = d["line"].as_u64().unwrap() as usize;
    assert!(
        reported == line || reported == line - 1,
        "diagnostic at line {reported}, the typo is on {line}: {bad}"
    );

    // Golden cases: all pass on the live set; the draft changes the urgent orders' ORC-7.
    let (status, golden) = call(&bridge, "POST", "golden", ANALYST, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(golden["passed"], true, "{golden}");
    assert!(golden["total"].as_u64().unwrap() >= 40, "{golden}");
    let (_, golden) = call(
        &bridge,
        "POST",
        "golden",
        ANALYST,
        json!({"draft": {"file": "orm_o01.yaml", "text": drafted}}),
    )
    .await;
    assert_eq!(golden["passed"], false);
    let failed: Vec<&Value> = golden["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["passed"] == false)
        .collect();
    assert_eq!(golden["failed"].as_u64().unwrap() as usize, failed.len());
    let routine = failed
        .iter()
        .find(|r| r["name"] == "order-routine-ct/orm_o01.hl7")
        .expect("the routine CT case differs");
    // Field by field, as `mappings test` shows it: the one component that changed.
    let diff = routine["diff"].as_str().unwrap();
    assert_eq!(diff.trim(), "ORC-7.6: A → S", "{diff}");
    assert!(
        failed
            .iter()
            .all(|r| r["name"].as_str().unwrap().ends_with("orm_o01.hl7"))
    );

    // An order as QUBS has it now, as the mappings read it; other domains are refused.
    let (status, order) = call(
        &bridge,
        "GET",
        "order?domain=acme&id=A0001",
        ANALYST,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{order}");
    let document: Value = serde_json::from_str(order["input"].as_str().unwrap()).unwrap();
    assert_eq!(document["appointment"]["appointmentId"], "A0001");
    assert_eq!(document["site"]["timeZone"], "Australia/Sydney");
    let (status, run) = call(
        &bridge,
        "POST",
        "preview",
        ANALYST,
        json!({"mapping": "orm_o01", "input": order["input"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        field(run["output"].as_str().unwrap(), "PID", 3)
            .split('^')
            .next(),
        Some("P-A0001")
    );
    let (status, _) = call(
        &bridge,
        "GET",
        "order?domain=acme&id=A7777",
        ANALYST,
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &bridge,
        "GET",
        "order?domain=globex&id=A0001",
        ANALYST,
        Value::Null,
    )
    .await;
    assert_eq!(status, 403);

    // Unknown mappings and files are named.
    let (status, body) = call(
        &bridge,
        "POST",
        "preview",
        ANALYST,
        json!({"mapping": "nope", "input": "{}"}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("orm_o01"),
        "{body}"
    );
    let (status, _) = call(
        &bridge,
        "POST",
        "golden",
        ANALYST,
        json!({"draft": {"file": "../etc/passwd", "text": ""}}),
    )
    .await;
    assert_eq!(status, 404);
}

#[test]
fn serve_demo_prints_how_to_sign_in_and_the_demo_token_has_every_role() {
    let demo = crate::cli::Demo::start();
    let console = demo.console.clone();
    assert!(console.starts_with("http://localhost:"), "{console}");
    let client = reqwest::blocking::Client::new();
    let session: Value = client
        .get(format!("{console}api/session"))
        .bearer_auth("demo-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(session["roles"], json!(["viewer", "analyst", "operator"]));
}

/// Copies the directory tree `from` to `to`.
pub(crate) fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn promotion_needs_the_golden_cases_keeps_history_and_rolls_back() {
    // The bridge serves a copy of the mapping directory: promotion writes files.
    let mappings = tempfile::tempdir().unwrap();
    copy_tree(std::path::Path::new("mappings"), mappings.path());
    let dir = mappings.path().to_path_buf();
    let bridge = bridge_with(600, |s| s.mappings.dir = dir.clone()).await;
    let file = dir.join("orm_o01.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    let rule = "      - target: ORC-7.6\n        from: appointment.priority\n        filters: [trim, {table: priority}, {table: hl7_priority}]\n";
    let drafted = original.replace(rule, "      - target: ORC-7.6\n        value: S\n");
    assert_ne!(drafted, original);
    let promote = |text: &str, accept: bool| {
        call(
            &bridge,
            "POST",
            "promote",
            ANALYST,
            json!({
                "draft": {"file": "orm_o01.yaml", "text": text},
                "note": "every order STAT",
                "acceptGoldenChanges": accept,
            }),
        )
    };
    let priority = |output: &Value| {
        field(output["output"].as_str().unwrap(), "ORC", 7)
            .split('^')
            .nth(5)
            .map(str::to_string)
    };
    let live_run = || {
        call(
            &bridge,
            "POST",
            "preview",
            ANALYST,
            json!({"mapping": "orm_o01", "input": routine_ct()}),
        )
    };
    let (_, before) = call(&bridge, "GET", "overview", VIEWER, Value::Null).await;

    // Golden outputs differ: refused, with the diffs, and nothing written.
    let (status, refused) = promote(&drafted, false).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("golden output(s) differ")
    );
    assert!(refused["failed"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    // A broken draft is refused with its diagnostics.
    let (status, _) = promote(&original.replace("value: MR", "valu: MR"), true).await;
    assert_eq!(status, 422);
    let (status, _) = promote(&original, true).await;
    assert_eq!(status, 400, "the live file is nothing to promote");

    // Accepted: the file is written, the live set reloaded, the expectations follow.
    let (status, promoted) = promote(&drafted, true).await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), drafted);
    assert_eq!(promoted["setBefore"], before["mappings"]["version"]);
    let (_, after) = call(&bridge, "GET", "overview", VIEWER, Value::Null).await;
    assert_eq!(after["mappings"]["version"], promoted["setAfter"]);
    assert_ne!(promoted["setAfter"], promoted["setBefore"]);
    let (_, run) = live_run().await;
    assert_eq!(priority(&run).as_deref(), Some("S"));
    let expected = std::fs::read_to_string(dir.join("tests/order-routine-ct/orm_o01.hl7")).unwrap();
    assert_eq!(field(&expected, "ORC", 7).split('^').nth(5), Some("S"));
    let (_, golden) = call(&bridge, "POST", "golden", ANALYST, json!({})).await;
    assert_eq!(golden["passed"], true, "{golden}");
    assert!(
        promoted["golden"]
            .as_str()
            .unwrap()
            .contains("order-routine-ct/orm_o01.hl7"),
        "{promoted}"
    );

    // History: the version with its diff.
    let (_, history) = call(&bridge, "GET", "history", ANALYST, Value::Null).await;
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["user"], "ana");
    assert_eq!(versions[0]["action"], "promote");
    assert_eq!(versions[0]["note"], "every order STAT");
    let id = versions[0]["id"].as_i64().unwrap();
    assert_eq!(promoted["id"], id);
    let (_, one) = call(
        &bridge,
        "GET",
        &format!("history/{id}"),
        ANALYST,
        Value::Null,
    )
    .await;
    let diff = one["diff"].as_str().unwrap();
    assert!(
        diff.lines()
            .any(|l| l == "-         from: appointment.priority"),
        "{diff}"
    );
    assert!(diff.lines().any(|l| l == "+         value: S"), "{diff}");

    // Roll back in one call: the old text and the old set are back.
    let (status, rolled) = call(
        &bridge,
        "POST",
        &format!("history/{id}/rollback"),
        ANALYST,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    assert_eq!(rolled["setAfter"], before["mappings"]["version"]);
    let (_, run) = live_run().await;
    assert_eq!(priority(&run).as_deref(), Some("A"));
    // The expectations accepted at promotion stay: the rollback says they now differ.
    let golden_after = rolled["golden"].as_str().unwrap();
    let matched: Vec<u64> = golden_after
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        matched.len() == 2 && matched[0] < matched[1],
        "{golden_after}"
    );
    let (_, second) = call(
        &bridge,
        "GET",
        &format!("history/{}?against={id}", rolled["id"]),
        ANALYST,
        Value::Null,
    )
    .await;
    assert!(
        second["diff"]
            .as_str()
            .unwrap()
            .contains("+         from: appointment.priority")
    );
    assert_eq!(second["note"], format!("rollback of version {id}"));

    let (_, audit) = call(&bridge, "GET", "audit", VIEWER, Value::Null).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["user"] == "ana")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["mapping.rollback", "mapping.promote"]);
}

/// A bridge whose order feed writes files into `drop_dir`.
async fn bridge_with_feed(drop_dir: std::path::PathBuf) -> Bridge {
    bridge_with(600, |s| {
        s.feed.enabled = true;
        s.feed.poll_interval_secs = 1;
        s.feed.poll_jitter = 0.0;
        s.feed.destinations = vec![qubs_bridge::feed::DestinationSettings {
            name: "dictation".into(),
            kind: qubs_bridge::feed::DestinationKind::File,
            directory: Some(drop_dir),
            ..Default::default()
        }];
    })
    .await
}

#[tokio::test]
async fn an_orders_timeline_shows_its_feed_messages_and_results() {
    let drop = tempfile::tempdir().unwrap();
    let drop_dir = drop.path().join("drop");
    let bridge = bridge_with_feed(drop_dir.clone()).await;
    let timeline = || {
        call(
            &bridge,
            "GET",
            "timeline?domain=acme&id=A0001",
            VIEWER,
            Value::Null,
        )
    };
    // The order goes out on the feed, delivered to the file destination.
    let started = std::time::Instant::now();
    let sent = loop {
        let (status, t) = timeline().await;
        assert_eq!(status, 200, "{t}");
        let delivered = t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "order sent" && s["deliveries"][0]["state"] == "delivered");
        if let Some(s) = delivered {
            break s.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never delivered: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sent["ok"], true);
    assert_eq!(sent["deliveries"][0]["destination"], "dictation");
    let (_, overview) = call(&bridge, "GET", "overview", VIEWER, Value::Null).await;
    let set = overview["mappings"]["version"].as_str().unwrap();
    let what = sent["what"].as_str().unwrap();
    assert!(
        what.starts_with("new order mapped with ") && what.contains(set),
        "{what}"
    );
    // The MSH-10 named is the one in the file the destination got.
    let msh10 = what.rsplit(' ').next().unwrap();
    let file = std::fs::read_dir(&drop_dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|f| !f.file_name().to_string_lossy().starts_with('.'))
        .unwrap();
    let message = std::fs::read_to_string(file.path()).unwrap();
    assert_eq!(field(&message, "MSH", 9), msh10, "{message}");
    assert_eq!(overview["feed"]["destinations"][0]["name"], "dictation");
    assert_eq!(overview["feed"]["watches"][0]["domain"], "acme");

    // A result for it: received, then submitted to QUBS.
    let mut results = ResultServiceClient::new(bridge.channel().await);
    results
        .submit_oru(authed(
            SubmitOruRequest {
                message: oru("TIMELINE-1", "A0001").into_bytes(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap();
    let result = loop {
        let (_, t) = timeline().await;
        let found = t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "result received" && s["result"]["state"] == "submitted");
        if let Some(s) = found {
            break s.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never submitted: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        result["what"].as_str().unwrap().contains("hl7 TIMELINE-1"),
        "{result}"
    );
    assert!(!result["result"]["reportGuid"].is_null());
    let (_, t) = timeline().await;
    assert_eq!(
        t["steps"][0]["step"], "result received",
        "newest first: {t}"
    );
    assert!(
        !t.to_string().contains("Patient A0001"),
        "no patient data: {t}"
    );
    let (status, _) = call(
        &bridge,
        "GET",
        "timeline?domain=globex&id=A0001",
        VIEWER,
        Value::Null,
    )
    .await;
    assert_eq!(status, 403);

    // Feed dead letters are retried per destination, audited.
    let (status, retried) =
        call(&bridge, "POST", "feed/dictation/retry", OPERATOR, json!({})).await;
    assert_eq!((status, retried["requeued"].clone()), (200, json!(0)));
    let (_, audit) = call(&bridge, "GET", "audit", VIEWER, Value::Null).await;
    assert_eq!(audit["entries"][0]["action"], "feed.retry");
    assert_eq!(audit["entries"][0]["target"], "destination dictation");
}

#[tokio::test]
async fn the_impact_preview_counts_changed_outputs_over_the_tracked_orders() {
    let drop = tempfile::tempdir().unwrap();
    let bridge = bridge_with_feed(drop.path().join("drop")).await;
    let text = std::fs::read_to_string("mappings/orm_o01.yaml").unwrap();
    let rule = "      - target: ORC-7.6\n        from: appointment.priority\n        filters: [trim, {table: priority}, {table: hl7_priority}]\n";
    let drafted = text.replace(rule, "      - target: ORC-7.6\n        value: S\n");
    let impact = |mapping: &str, text: &str| {
        call(
            &bridge,
            "POST",
            "impact",
            ANALYST,
            json!({"mapping": mapping, "draft": {"file": "orm_o01.yaml", "text": text}}),
        )
    };
    let started = std::time::Instant::now();
    let report = loop {
        let (status, r) = impact("orm_o01", &drafted).await;
        assert_eq!(status, 200, "{r}");
        if r["examined"] == 1 {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the feed never tracked A0001: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["changed"], 1, "{report}");
    assert_eq!(report["unchanged"], 0);
    assert_eq!(report["failed"], json!([]));
    let kind = &report["kinds"][0];
    assert_eq!(
        kind["fields"],
        json!(["ORC-7.6"]),
        "MSH-7 and MSH-10 are not changes: {report}"
    );
    assert_eq!(kind["count"], 1);
    assert_eq!(kind["appointments"], json!(["acme/A0001"]));
    let example = &kind["example"][0];
    assert_eq!(example["field"], "ORC-7.6");
    assert_ne!(example["before"], "S", "{example}");
    assert_eq!(example["after"], "S", "{example}");
    // The live text as the draft changes nothing.
    let (_, same) = impact("orm_o01", &text).await;
    assert_eq!(
        (same["changed"].clone(), same["unchanged"].clone()),
        (json!(0), json!(1))
    );
    let (status, _) = impact("oru_to_report", &drafted).await;
    assert_eq!(status, 400);
    // Without the feed there is nothing to replay.
    let plain = bridge_with_console(600).await;
    let (status, body) = call(
        &plain,
        "POST",
        "impact",
        ANALYST,
        json!({"mapping": "orm_o01", "draft": {"file": "orm_o01.yaml", "text": drafted}}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn feed_dead_letters_are_listed_with_their_reason_and_retried() {
    // A consumer that answers AE once (a dead letter by default), then AA.
    let consumer = common::consumer::Consumer::start().await;
    consumer.script("A0001", &[common::consumer::Reply::Ack("AE")]);
    let address = consumer.addr.to_string();
    let bridge = bridge_with(600, |s| {
        s.feed.enabled = true;
        s.feed.poll_interval_secs = 1;
        s.feed.destinations = vec![qubs_bridge::feed::DestinationSettings {
            name: "dictation".into(),
            address: Some(address),
            ..Default::default()
        }];
    })
    .await;
    let started = std::time::Instant::now();
    let destination = loop {
        let (_, o) = call(&bridge, "GET", "overview", VIEWER, Value::Null).await;
        let d = o["feed"]["destinations"][0].clone();
        if d["dead"] == 1 {
            break d;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never dead: {o}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dead = &destination["deadLetters"][0];
    assert_eq!(dead["appointmentId"], "A0001");
    assert_eq!(dead["kind"], "new");
    assert_eq!(dead["ackCode"], "AE");
    let sent = consumer.received();
    assert_eq!(
        dead["controlId"].as_str().unwrap(),
        sent[0].control_id,
        "the MSH-10 sent"
    );
    let (status, retried) =
        call(&bridge, "POST", "feed/dictation/retry", OPERATOR, json!({})).await;
    assert_eq!((status, retried["requeued"].clone()), (200, json!(1)));
    let accepted = consumer.wait_accepted(1, Duration::from_secs(20)).await;
    assert_eq!(
        accepted[0].control_id, sent[0].control_id,
        "resent as it was"
    );
    loop {
        let (_, o) = call(&bridge, "GET", "overview", VIEWER, Value::Null).await;
        let d = &o["feed"]["destinations"][0];
        if d["delivered"] == 1 {
            assert_eq!(
                (d["dead"].clone(), d["deadLetters"].clone()),
                (json!(0), json!([]))
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never delivered: {o}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `body` to the API with a session cookie and, when given, its CSRF token.
async fn post_in_session(
    bridge: &Bridge,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Value,
) -> u16 {
    let mut r = http()
        .post(url(bridge, &format!("api/{path}")))
        .header("cookie", cookie);
    if let Some(t) = csrf {
        r = r.header("x-csrf-token", t);
    }
    r.json(&body).send().await.unwrap().status().as_u16()
}

/// The 1-based line of `needle` in `text` (the first line that is exactly it).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l == needle)
        .unwrap_or_else(|| panic!("no line `{needle}`"))
        + 1
}

#[tokio::test]
async fn the_trace_names_each_rule_and_the_input_fields_it_reads() {
    let bridge = bridge_with_console(600).await;
    let text = std::fs::read_to_string("mappings/orm_o01.yaml").unwrap();
    let order: Value = serde_json::from_str(&routine_ct()).unwrap();
    let (status, run) = call(
        &bridge,
        "POST",
        "preview",
        ANALYST,
        json!({"mapping": "orm_o01", "input": routine_ct()}),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    let entries = run["trace"]["fields"].as_array().unwrap();
    let entry = |target: &str| {
        entries
            .iter()
            .find(|f| f["target"] == target)
            .unwrap_or_else(|| panic!("no {target} in the trace"))
    };
    // ORC-7.6: the rule where the file has it, its source and raw value, each filter step.
    let orc = entry("ORC-7.6");
    let rule = orc["rule"].as_str().unwrap();
    let line = line_of(&text, "      - target: ORC-7.6");
    assert!(
        rule.starts_with(&format!("orm_o01.yaml:{line}:")),
        "{rule}, the rule is on line {line}"
    );
    let alternative = &orc["source"]["alternatives"][0];
    assert_eq!(alternative["path"], "appointment.priority");
    assert_eq!(alternative["raw"], order["appointment"]["priority"]);
    let filters: Vec<&str> = orc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["filter"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        ["trim", "{table: priority}", "{table: hl7_priority}"]
    );
    assert_eq!(orc["steps"][2]["table"]["hit"], true);
    assert_eq!(orc["value"], "A");
    // The rule reads the priority, and so does OBR-27.6's: those are what the field feeds.
    let reads = &run["ruleReads"];
    assert_eq!(
        reads[rule],
        json!([{"field": "appointment.priority", "use": "sent"}]),
        "{reads}"
    );
    let feeds: Vec<&str> = entries
        .iter()
        .filter(|f| {
            reads[f["rule"].as_str().unwrap()]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["field"] == "appointment.priority"))
        })
        .map(|f| f["target"].as_str().unwrap())
        .collect();
    assert!(
        feeds.contains(&"ORC-7.6") && feeds.contains(&"OBR-27.6"),
        "{feeds:?}"
    );
    // ORC-7.4 is decided by its `when` on the start time and written in the site's zone.
    let start = &reads[entry("ORC-7.4")["rule"].as_str().unwrap()];
    for (field, how) in [
        ("appointment.startTime", "decides"),
        ("appointment.startTime", "sent"),
        ("site.timeZone", "decides"),
    ] {
        assert!(
            start
                .as_array()
                .unwrap()
                .contains(&json!({"field": field, "use": how})),
            "{field} {how}: {start}"
        );
    }
}

#[tokio::test]
async fn a_golden_case_output_is_accepted_as_its_new_expectation() {
    let mappings = tempfile::tempdir().unwrap();
    copy_tree(std::path::Path::new("mappings"), mappings.path());
    let dir = mappings.path().to_path_buf();
    let bridge = bridge_with(600, |s| s.mappings.dir = dir.clone()).await;
    let text = std::fs::read_to_string(dir.join("orm_o01.yaml")).unwrap();
    let rule = "      - target: ORC-7.6\n        from: appointment.priority\n        filters: [trim, {table: priority}, {table: hl7_priority}]\n";
    let drafted = text.replace(rule, "      - target: ORC-7.6\n        value: S\n");
    let draft = json!({"file": "orm_o01.yaml", "text": drafted});
    let name = "order-routine-ct/orm_o01.hl7";
    let expected_file = dir.join("tests/order-routine-ct/orm_o01.hl7");
    let before = std::fs::read_to_string(&expected_file).unwrap();
    let golden = || call(&bridge, "POST", "golden", ANALYST, json!({"draft": draft}));
    let status_of = |report: &Value, name: &str| {
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["status"].as_str().unwrap().to_string())
    };
    let (_, report) = golden().await;
    assert_eq!(
        status_of(&report, name).as_deref(),
        Some("fail"),
        "{report}"
    );
    let differing = report["failed"].as_u64().unwrap();
    assert!(differing > 1, "other cases differ too: {report}");
    let accept = json!({"name": name, "draft": draft});

    // Refused without credentials, below the analyst role, and without the CSRF token.
    let (status, _) = call(&bridge, "POST", "golden/accept", "nobody", accept.clone()).await;
    assert_eq!(status, 401);
    let (status, _) = call(&bridge, "POST", "golden/accept", OPERATOR, accept.clone()).await;
    assert_eq!(status, 403);
    let (cookie, _, csrf) = sign_in(&bridge, ANALYST).await;
    let status = post_in_session(&bridge, "golden/accept", &cookie, None, accept.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(std::fs::read_to_string(&expected_file).unwrap(), before);

    // Accepted in the session: the file is the draft's output, only ORC-7.6 changed (the
    // case's own clock and control id keep MSH-7 and MSH-10 as they were).
    let status = post_in_session(
        &bridge,
        "golden/accept",
        &cookie,
        Some(&csrf),
        accept.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let after = std::fs::read_to_string(&expected_file).unwrap();
    let orc = before.lines().find(|l| l.starts_with("ORC|")).unwrap();
    assert!(orc.contains("^A|"), "{orc}");
    assert_eq!(after, before.replace(orc, &orc.replace("^A|", "^S|")));
    // That case passes with the draft now; the others still differ.
    let (_, report) = golden().await;
    assert_eq!(status_of(&report, name).as_deref(), Some("ok"), "{report}");
    assert_eq!(report["failed"].as_u64().unwrap(), differing - 1);
    assert!(
        !dir.join("tests/order-routine-ct/.orm_o01.hl7.tmp").exists(),
        "no temporary file is left"
    );

    // Nothing left to accept; unknown cases and outputs are named.
    let (status, body) = call(&bridge, "POST", "golden/accept", ANALYST, accept).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already matches"));
    let (status, _) = call(
        &bridge,
        "POST",
        "golden/accept",
        ANALYST,
        json!({"name": "no-such-case/orm_o01.hl7"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = call(
        &bridge,
        "POST",
        "golden/accept",
        ANALYST,
        json!({"name": "order-routine-ct/nothing.hl7"}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("orm_o01.hl7"),
        "{body}"
    );

    let (_, audit) = call(&bridge, "GET", "audit", VIEWER, Value::Null).await;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "golden.accept")
        .expect("the acceptance is audited");
    assert_eq!(entry["user"], "ana");
    assert_eq!(entry["via"], "session");
    assert_eq!(entry["target"], name);
    assert_eq!(
        entry["detail"],
        "fields ORC-7.6; output of the draft of orm_o01.yaml"
    );
}

#[tokio::test]
async fn after_a_promotion_the_changed_orders_are_resent_to_feed_consumers() {
    let mappings = tempfile::tempdir().unwrap();
    copy_tree(std::path::Path::new("mappings"), mappings.path());
    let dir = mappings.path().to_path_buf();
    let drop = tempfile::tempdir().unwrap();
    let drop_dir = drop.path().join("drop");
    let files = {
        let drop_dir = drop_dir.clone();
        move || -> Vec<String> {
            let mut names: Vec<_> = std::fs::read_dir(&drop_dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|f| f.path())
                        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect()
        }
    };
    let bridge = bridge_with(600, |s| {
        s.mappings.dir = dir.clone();
        s.feed.enabled = true;
        s.feed.poll_interval_secs = 1;
        s.feed.poll_jitter = 0.0;
        // Only the console re-sends here: the watcher leaves a new mapping set alone.
        s.feed.on_mapping_change = qubs_bridge::feed::OnMappingChange::Ignore;
        s.feed.destinations = vec![qubs_bridge::feed::DestinationSettings {
            name: "dictation".into(),
            kind: qubs_bridge::feed::DestinationKind::File,
            directory: Some(drop_dir.clone()),
            ..Default::default()
        }];
    })
    .await;
    common::eventually(
        "A0001 goes out on the feed",
        Duration::from_secs(20),
        || files().len() == 1,
    )
    .await;
    let first = files().remove(0);
    assert_ne!(field(&first, "ORC", 7).split('^').nth(5), Some("S"));

    let text = std::fs::read_to_string(dir.join("orm_o01.yaml")).unwrap();
    let rule = "      - target: ORC-7.6\n        from: appointment.priority\n        filters: [trim, {table: priority}, {table: hl7_priority}]\n";
    let drafted = text.replace(rule, "      - target: ORC-7.6\n        value: S\n");
    let (status, promoted) = call(
        &bridge,
        "POST",
        "promote",
        ANALYST,
        json!({"draft": {"file": "orm_o01.yaml", "text": drafted}, "acceptGoldenChanges": true}),
    )
    .await;
    assert_eq!(status, 200, "{promoted}");

    // A dry run counts and shows the change, and sends nothing.
    let (status, dry) = call(
        &bridge,
        "POST",
        "feed/resend",
        OPERATOR,
        json!({"dryRun": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (
            dry["tracked"].clone(),
            dry["changed"].clone(),
            dry["resent"].clone()
        ),
        (json!(1), json!(1), json!(0)),
        "{dry}"
    );
    assert_eq!(dry["onMappingChange"], "ignore");
    assert_eq!(dry["mappingVersion"], promoted["setAfter"]);
    let example = &dry["domains"][0]["example"];
    assert_eq!(example["appointmentId"], "A0001");
    assert_eq!(
        example["changes"],
        json!([{
            "field": "ORC-7.6",
            "before": field(&first, "ORC", 7).split('^').nth(5).unwrap_or_default(),
            "after": "S",
        }])
    );

    // Refused to an analyst, without credentials, and without the CSRF token.
    let (status, _) = call(&bridge, "POST", "feed/resend", ANALYST, json!({})).await;
    assert_eq!(status, 403);
    let (status, _) = call(&bridge, "POST", "feed/resend", "nobody", json!({})).await;
    assert_eq!(status, 401);
    let (cookie, _, csrf) = sign_in(&bridge, OPERATOR).await;
    let status = post_in_session(&bridge, "feed/resend", &cookie, None, json!({})).await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &bridge,
        "POST",
        "feed/resend",
        OPERATOR,
        json!({"domain": "globex"}),
    )
    .await;
    assert_eq!(status, 403);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        files().len(),
        1,
        "nothing was sent by a dry run or a refusal"
    );

    // Re-sent: an XO with the new priority reaches the consumer; audited.
    let status = post_in_session(&bridge, "feed/resend", &cookie, Some(&csrf), json!({})).await;
    assert_eq!(status, 200);
    common::eventually("the XO is delivered", Duration::from_secs(20), || {
        files().len() == 2
    })
    .await;
    let xo = files()
        .into_iter()
        .find(|m| m != &first)
        .expect("a second message");
    assert_eq!(field(&xo, "ORC", 1), "XO", "{xo}");
    assert_eq!(field(&xo, "ORC", 7).split('^').nth(5), Some("S"), "{xo}");
    let (_, again) = call(&bridge, "POST", "feed/resend", OPERATOR, json!({})).await;
    assert_eq!(
        (again["changed"].clone(), again["resent"].clone()),
        (json!(0), json!(0)),
        "the consumer has it now: {again}"
    );

    let (_, audit) = call(&bridge, "GET", "audit", VIEWER, Value::Null).await;
    let resends: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "feed.resend")
        .collect();
    assert_eq!(resends.len(), 2, "each resend, not the dry run: {audit}");
    let first_resend = resends[1];
    assert_eq!(first_resend["user"], "otto");
    assert_eq!(first_resend["target"], "domains acme");
    assert!(
        first_resend["detail"]
            .as_str()
            .unwrap()
            .starts_with("resent 1: 1 of 1 tracked order(s) changed"),
        "{first_resend}"
    );
}

#[tokio::test]
async fn the_playground_takes_a_recent_result_from_the_outbox() {
    let bridge = bridge_with_console(600).await;
    let message = oru("CONSOLE-INPUT-1", "A0001");
    let mut results = ResultServiceClient::new(bridge.channel().await);
    let id = results
        .submit_oru(authed(
            SubmitOruRequest {
                message: message.clone().into_bytes(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .reports[0]
        .outbox_id;
    let path = format!("outbox/{id}/input");
    // Patient data: analysts only.
    for token in [VIEWER, OPERATOR] {
        let (status, _) = call(&bridge, "GET", &path, token, Value::Null).await;
        assert_eq!(status, 403);
    }
    let (status, _) = call(&bridge, "GET", &path, "nobody", Value::Null).await;
    assert_eq!(status, 401);
    let (status, input) = call(&bridge, "GET", &path, ANALYST, Value::Null).await;
    assert_eq!(status, 200, "{input}");
    assert_eq!(input["kind"], "oru");
    assert_eq!(input["input"], message.as_str(), "as received");
    assert_eq!(input["sourceId"], "CONSOLE-INPUT-1");
    assert_eq!(input["appointmentId"], "A0001");
    let (status, _) = call(&bridge, "GET", "outbox/999999/input", ANALYST, Value::Null).await;
    assert_eq!(status, 404);

    // It runs through the ORU mapping like any input, with its trace.
    let (status, run) = call(
        &bridge,
        "POST",
        "preview",
        ANALYST,
        json!({
            "mapping": "oru_to_report",
            "input": input["input"],
            "siteTimeZone": "Australia/Sydney",
        }),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["errors"], json!([]), "{run}");
    let submissions: Value = serde_json::from_str(run["output"].as_str().unwrap()).unwrap();
    assert_eq!(submissions[0]["appointmentId"], "A0001");
    let text = run["trace"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["target"] == "reportText")
        .expect("the report text is traced");
    assert!(
        run["ruleReads"][text["rule"].as_str().unwrap()]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["field"].as_str().unwrap().starts_with("OBX")),
        "{}",
        run["ruleReads"]
    );
}
