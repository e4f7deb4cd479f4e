//! The console in a real headless Chromium and a real headless Firefox (Debian's packages,
//! driven over WebDriver), the same scenario in each: sign in, read the dashboard, find a
//! dead letter by appointment id and retry it, open the order's timeline, open the
//! playground, select ORC-7 and read its trace (rule and source value, checked against the
//! mapping file and the case's order), select the priority in the input and see the output
//! fields it feeds, edit the priority rule and see ORC-7 change, run the golden cases, see
//! the field diff and accept one case's new output, promote the draft and re-send the
//! changed orders, read its diff in the history and roll it back, see a draft's error at
//! file:line:col, read the audit log, sign out. Screenshots of each page go to
//! `target/tmp/console-screenshots/` (Firefox's to its `firefox/` directory).

use crate::common;

use std::time::Duration;

use common::browser::{Browser, Engine};
use common::{GRPC_TOKEN, authed};
use qubs_bridge::grpc::pb::SubmitOruRequest;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use serde_json::json;

use crate::console::{ADMIN, bridge_with, copy_tree};

/// ORC-7.6 in the ER7 text the playground shows (segments on their own lines).
fn orc_priority(er7: &str) -> Option<String> {
    er7.lines()
        .find(|l| l.starts_with("ORC|"))
        .and_then(|l| l.split('|').nth(7))
        .and_then(|f| f.split('^').nth(5))
        .map(str::to_string)
}

/// The playground's output once the run its last change led to is on screen (a field
/// selected earlier would be lost with the redraw).
const OUTPUT: &str = "#pg-output-box:not([aria-busy]) #pg-output";

/// Sets a form control's value as typing would, and tells the page (`input`/`change`).
const SET_VALUE: &str = "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
     e.dispatchEvent(new Event(arguments[2], {bubbles: true}));";

#[tokio::test]
async fn an_operator_and_an_analyst_work_in_the_console_in_chromium() {
    scenario(Engine::Chromium).await;
}

#[tokio::test]
async fn an_operator_and_an_analyst_work_in_the_console_in_firefox() {
    scenario(Engine::Firefox).await;
}

async fn scenario(engine: Engine) {
    // A copy of the mapping directory: the test promotes a mapping.
    let mappings = tempfile::tempdir().unwrap();
    copy_tree(std::path::Path::new("mappings"), mappings.path());
    let dir = mappings.path().to_path_buf();
    // The order feed on (to files), so that the impact preview has orders to replay.
    let drop = tempfile::tempdir().unwrap();
    let drop_dir = drop.path().to_path_buf();
    let dropped = drop_dir.clone();
    let bridge = bridge_with(600, |s| {
        s.mappings.dir = dir.clone();
        s.feed.enabled = true;
        s.feed.poll_interval_secs = 1;
        // The console re-sends after the promotion; the watcher would do it at its next poll.
        s.feed.on_mapping_change = qubs_bridge::feed::OnMappingChange::Ignore;
        s.feed.destinations = vec![qubs_bridge::feed::DestinationSettings {
            name: "dictation".into(),
            kind: qubs_bridge::feed::DestinationKind::File,
            directory: Some(drop_dir),
            ..Default::default()
        }];
    })
    .await;
    let orm_file = dir.join("orm_o01.yaml");
    let original = std::fs::read_to_string(&orm_file).unwrap();
    // A dead letter to find: a result for an appointment QUBS does not know.
    let mut results = ResultServiceClient::new(bridge.channel().await);
    let oru = [
        "MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|BROWSER-1|P|2.5.1",
        "PID|1||P1^^^acme^MR||Citizen^Jane",
        "ORC|RE|A0404",
        "OBR|1|A0404||CTHEAD^CT Head|||20261127090000|||||||||||||||202611270930|||F",
        "OBX|1|TX|||IMPRESSION: Normal study.||||||F",
    ]
    .join("\r");
    let id = results
        .submit_oru(authed(
            SubmitOruRequest {
                message: oru.into_bytes(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .reports[0]
        .outbox_id;
    let outbox = reqwest::Client::new();
    let entry_url = format!(
        "http://{}/console/api/outbox/{id}",
        bridge.service.admin_addr
    );
    let started = std::time::Instant::now();
    loop {
        let e: serde_json::Value = outbox
            .get(&entry_url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if e["state"] == "dead" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never dead: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let browser = Browser::start(engine).await;
    // `localhost`: browsers keep the Secure session cookie over plain HTTP only there.
    let base = format!(
        "http://localhost:{}/console/",
        bridge.service.admin_addr.port()
    );

    // Sign in.
    browser.goto(&base).await;
    browser.find("#token").await;
    assert!(browser.url().await.ends_with("/console/login"));
    browser.screenshot("login").await;
    browser.find("#token").await.type_text(ADMIN).await;
    browser.find("#login-submit").await.click().await;
    browser
        .wait_text("#who", |t| t.contains("root") && t.contains("operator"))
        .await;

    // The dashboard shows the dead letter.
    browser
        .wait_text("main", |t| {
            t.contains("Dashboard") && t.contains("dead letters (results)")
        })
        .await;
    let cards = browser
        .run(
            "return [...document.querySelectorAll('.card')].map(c => c.innerText)",
            json!([]),
        )
        .await;
    assert!(
        cards
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("1\ndead letters")),
        "{cards}"
    );
    browser.screenshot("dashboard").await;

    // Find it by appointment id and retry it.
    browser.find("#nav-outbox").await.click().await;
    browser.find("#outbox-q").await.type_text("A0404").await;
    browser.find("#outbox-search").await.click().await;
    let row = browser
        .wait_text("#outbox-results", |t| {
            t.contains("A0404") && t.contains("dead")
        })
        .await;
    assert!(row.contains("BROWSER-1"), "{row}");
    assert!(row.contains("not_found"), "the reason is shown: {row}");
    browser.screenshot("outbox").await;
    bridge.sim.put_appointment("acme", common::pending("A0404"));
    browser.find("button.retry").await.click().await;
    browser
        .wait_text("#flash", |t| t.contains("1 result(s) queued again"))
        .await;
    common::eventually(
        "the retried report reaches QUBS",
        Duration::from_secs(20),
        || bridge.sim.report("acme", "A0404").is_some(),
    )
    .await;

    // The order's timeline, from the row: the result, now in QUBS.
    browser
        .find(r##"#outbox-results a[href="#timeline/acme/A0404"]"##)
        .await
        .click()
        .await;
    let steps = browser
        .wait_text("#tl-steps", |t| t.contains("QUBS report"))
        .await;
    assert!(
        steps.contains("result received") && steps.contains("BROWSER-1"),
        "{steps}"
    );
    browser.screenshot("timeline").await;

    // The playground: the routine CT order through orm_o01.
    browser.find("#nav-playground").await.click().await;
    browser.find("#pg-mapping").await;
    browser
        .run(SET_VALUE, json!(["#pg-mapping", "orm_o01", "change"]))
        .await;
    browser
        .run(SET_VALUE, json!(["#pg-case", "order-routine-ct", "change"]))
        .await;
    let output = browser
        .wait_text(OUTPUT, |t| orc_priority(t).as_deref() == Some("A"))
        .await;
    assert!(output.starts_with("MSH|"), "{output}");

    // Select ORC-7: its trace names the priority rule at its line in the file, the source
    // path with the order's raw value, and each table the value went through.
    let order: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tests/order-routine-ct/order.json")).unwrap(),
    )
    .unwrap();
    let priority = order["appointment"]["priority"].as_str().unwrap();
    let rule_line = original
        .lines()
        .position(|l| l == "      - target: ORC-7.6")
        .unwrap()
        + 1;
    let orc7 = r#"#pg-output .field[data-field="ORC-7"]"#;
    browser.find(orc7).await.click().await;
    let card = r#"#pg-trace .trace-entry[data-target="ORC-7.6"]"#;
    let traced = browser
        .wait_text(card, |t| t.contains("orm_o01.yaml:"))
        .await;
    assert!(
        traced.contains(&format!("orm_o01.yaml:{rule_line}:")),
        "the rule is on line {rule_line}: {traced}"
    );
    assert!(
        traced.contains(&format!("appointment.priority\t\"{priority}\"")),
        "the source and its raw value: {traced}"
    );
    assert!(
        traced.contains("{table: hl7_priority}") && traced.contains("hl7_priority: “"),
        "{traced}"
    );
    // It shows as selected (console.css: #f0b429) with the pointer still on it, as after a
    // click with a mouse.
    let shown = browser
        .run(
            "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor",
            json!([orc7]),
        )
        .await;
    assert_eq!(shown, "rgb(240, 180, 41)", "ORC-7's background");
    browser
        .run(
            "document.querySelector('#pg-output-box').parentElement.scrollIntoView()",
            json!([]),
        )
        .await;
    browser.screenshot("trace").await;
    // The priority in the input, chosen with the keyboard: the output fields it feeds.
    let input_priority = r#"#pg-input-view .field[data-path="appointment.priority"]"#;
    browser.find(input_priority).await;
    browser
        .run(
            "const s = document.querySelector(arguments[0]); s.focus(); \
             s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));",
            json!([input_priority]),
        )
        .await;
    let feeds = browser
        .wait_text("#pg-feeds", |t| t.contains("ORC-7.6"))
        .await;
    assert!(feeds.contains("OBR-27.6"), "{feeds}");
    let fed = browser
        .run(
            "return [...document.querySelectorAll('#pg-output .fed')].map(s => s.dataset.field)",
            json!([]),
        )
        .await;
    assert!(fed.as_array().unwrap().contains(&json!("ORC-7")), "{fed}");
    // What feeds ORC-7, from the rules: the priority among others.
    browser
        .find("#pg-fields-filter")
        .await
        .type_text("ORC-7")
        .await;
    let feeds = browser
        .wait_text("#pg-fields", |t| t.contains("appointment.priority"))
        .await;
    assert!(feeds.contains("ORC-7"), "{feeds}");

    // Edit the priority rule: ORC-7.6 becomes a constant, and the output follows.
    let rule = "      - target: ORC-7.6\n        from: appointment.priority\n        filters: [trim, {table: priority}, {table: hl7_priority}]\n";
    let yaml = browser
        .run("return document.querySelector('#pg-yaml').value", json!([]))
        .await;
    let yaml = yaml.as_str().unwrap();
    assert!(yaml.contains(rule));
    // The editor highlights the YAML under the textarea, letter for letter.
    let under = browser
        .run(
            "const u = document.querySelector('.editor .yaml-under'); \
             return [u.textContent, u.querySelectorAll('.y-key').length, u.querySelectorAll('.y-comment').length]",
            json!([]),
        )
        .await;
    assert_eq!(under[0].as_str().unwrap().trim_end(), yaml.trim_end());
    assert!(
        under[1].as_u64().unwrap() > 50 && under[2].as_u64().unwrap() > 5,
        "{under}"
    );
    let drafted = yaml.replace(rule, "      - target: ORC-7.6\n        value: S\n");
    browser
        .run(SET_VALUE, json!(["#pg-yaml", drafted, "input"]))
        .await;
    browser
        .wait_text(OUTPUT, |t| orc_priority(t).as_deref() == Some("S"))
        .await;
    browser
        .wait_text("#pg-draft-state", |t| t.contains("draft"))
        .await;
    // ORC-7's trace follows the draft: the constant, from the same line.
    browser.find(orc7).await.click().await;
    let traced = browser.wait_text(card, |t| t.contains("Constant")).await;
    assert!(
        traced.contains("\"S\"") && traced.contains(&format!("orm_o01.yaml:{rule_line}:")),
        "{traced}"
    );
    browser.run("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshot("playground").await;

    // Its impact on the orders the feed tracks (A0001 and A0404, neither with a priority:
    // ORC-7.6 changes in each).
    browser.find("#pg-impact-run").await.click().await;
    let impact = browser
        .wait_text("#pg-impact", |t| {
            t.contains("tracked orders change, 0 do not")
        })
        .await;
    let counts: Vec<&str> = impact.split_whitespace().take(3).collect();
    assert_eq!(
        counts[0], counts[2],
        "every tracked order changes: {impact}"
    );
    assert!(
        impact.contains(&format!("{} order(s): ORC-7.6\n", counts[0])),
        "{impact}"
    );
    browser.screenshot("impact").await;

    // The golden cases against the draft: the routine CT's ORM differs, field by field.
    browser.find("#pg-golden-run").await.click().await;
    let summary = browser
        .wait_text("#pg-golden-summary", |t| t.contains("differ"))
        .await;
    assert!(summary.contains("with the draft"), "{summary}");
    let case = r#"details[data-case="order-routine-ct/orm_o01.hl7"]"#;
    browser.find(&format!("{case} summary")).await.click().await;
    // Field by field: the one component that changed, from the expectation to the draft's.
    let diff = browser
        .wait_text(&format!("{case} pre"), |t| t.contains("ORC-7.6"))
        .await;
    assert_eq!(diff.trim(), "ORC-7.6: A → S", "{diff}");
    browser.screenshot("golden-diff").await;
    let differing = |summary: &str| -> usize {
        summary
            .split("; ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count of differing outputs: {summary}"))
    };
    let before = differing(&summary);

    // Accept that case's new output: its expected file is the draft's output now.
    browser
        .find(&format!("{case} button.golden-accept"))
        .await
        .click()
        .await;
    browser
        .wait_text("#flash", |t| {
            t.contains("new expectation written (ORC-7.6)")
        })
        .await;
    let summary = browser
        .wait_text("#pg-golden-summary", |t| differing(t) == before - 1)
        .await;
    assert!(summary.contains("with the draft"), "{summary}");
    let gone = browser
        .run(
            "return document.querySelector(arguments[0]) === null",
            json!([case]),
        )
        .await;
    assert_eq!(gone, true, "the accepted case no longer differs");
    let expected = std::fs::read_to_string(dir.join("tests/order-routine-ct/orm_o01.hl7")).unwrap();
    assert_eq!(orc_priority(&expected).as_deref(), Some("S"), "{expected}");

    // Promote it, accepting the changed outputs as the cases' new expectations.
    browser
        .find("#pg-note")
        .await
        .type_text("every order STAT")
        .await;
    browser.find("#pg-accept").await.click().await;
    browser.find("#pg-promote").await.click().await;
    let promoted = browser
        .wait_text("#pg-promoted", |t| t.contains("Promoted orm_o01.yaml"))
        .await;
    assert!(promoted.contains("expectations accepted"), "{promoted}");
    assert_eq!(std::fs::read_to_string(&orm_file).unwrap(), drafted);

    // Re-send the orders the promotion changed: checked first, then sent as XO messages.
    browser.find("#pg-resend-check").await.click().await;
    let check = browser
        .wait_text("#pg-resend-summary", |t| t.contains("would be re-sent"))
        .await;
    let would: usize = check.split_whitespace().next().unwrap().parse().unwrap();
    assert!(would >= 1, "{check}");
    browser.find("#pg-resend").await.click().await;
    let sent = browser
        .wait_text("#pg-resend-summary", |t| t.starts_with("Re-sent"))
        .await;
    assert!(
        sent.starts_with(&format!("Re-sent {would} changed")),
        "{sent}"
    );
    common::eventually(
        "an XO reaches the consumer",
        Duration::from_secs(20),
        || {
            std::fs::read_dir(&dropped)
                .unwrap()
                .filter_map(Result::ok)
                .any(|f| {
                    std::fs::read_to_string(f.path())
                        .unwrap_or_default()
                        .split(['\r', '\n'])
                        .any(|l| l.starts_with("ORC|XO|"))
                })
        },
    )
    .await;
    browser.screenshot("resend").await;

    // The history: the version's diff, then the way back.
    browser.find("#nav-history").await.click().await;
    browser.find("button.history-diff").await.click().await;
    let diff = browser
        .wait_text("#history-diff", |t| t.contains("value: S"))
        .await;
    assert!(
        diff.lines()
            .any(|l| l == "-         from: appointment.priority"),
        "{diff}"
    );
    browser.screenshot("history").await;
    browser.find("button.history-rollback").await.click().await;
    browser.accept_dialog().await;
    browser
        .wait_text("#flash", |t| t.contains("rolled back"))
        .await;
    assert_eq!(std::fs::read_to_string(&orm_file).unwrap(), original);

    // A typo in a draft: the error at file:line:col, from the same checks as the CLI.
    browser.find("#nav-playground").await.click().await;
    browser.find("#pg-mapping").await;
    browser
        .run(SET_VALUE, json!(["#pg-mapping", "orm_o01", "change"]))
        .await;
    browser
        .wait_text(OUTPUT, |t| orc_priority(t).as_deref() == Some("A"))
        .await;
    let broken = drafted.replace("        value: S\n", "        valu: S\n");
    browser
        .run(SET_VALUE, json!(["#pg-yaml", broken, "input"]))
        .await;
    let line = broken.lines().position(|l| l.contains("valu: S")).unwrap() + 1;
    let diag = browser
        .wait_text("#pg-diagnostics", |t| t.contains("orm_o01.yaml:"))
        .await;
    assert!(
        diag.contains(&format!("orm_o01.yaml:{line}:"))
            || diag.contains(&format!("orm_o01.yaml:{}:", line - 1)),
        "line {line}: {diag}"
    );

    // The audit log has the retry, by the signed-in user, through the session.
    browser.find("#nav-audit").await.click().await;
    let audit = browser
        .wait_text("main table", |t| t.contains("outbox.retry"))
        .await;
    let retry_row = audit.lines().find(|l| l.contains("outbox.retry")).unwrap();
    assert!(
        retry_row.contains("root") && retry_row.contains("session"),
        "{retry_row}"
    );
    assert!(retry_row.contains(&format!("outbox {id}")), "{retry_row}");
    browser.screenshot("audit").await;

    // Signing out ends the session: the page sends the browser back to the sign-in form.
    browser.find("#logout").await.click().await;
    browser.find("#login-form").await;
    browser.goto(&format!("{base}#dashboard")).await;
    browser.find("#login-form").await;
}
