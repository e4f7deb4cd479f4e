//! The CLI as scripts use it: a closed stdout, exit statuses and error messages, JSON on
//! every command that prints records, colour rules, completion scripts and man pages in
//! step with the parser, and README's pipelines run as written (with `head`, `grep` and jq).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::cli::{Demo, VALID, bridge, wait_exit, write_config};
use crate::common;

const ORU: &str = "tests/data/demo-oru-A100001.hl7";
const ORDER: &str = "mappings/tests/order-routine-ct/order.json";

/// The binary as a client of `demo`.
fn client_of(demo: &Demo) -> Command {
    let mut cmd = bridge();
    cmd.env("QUBS_BRIDGE_SERVER", &demo.server)
        .env("QUBS_BRIDGE_TOKEN", "demo-token");
    cmd
}

/// Runs `cmd` with a stdout whose reader is gone before the command writes anything.
/// Returns the exit code (None: killed by a signal) and stderr.
fn with_closed_stdout(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = child.stderr.take().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    (status.code(), err)
}

/// Runs `cmd`: (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let demo = Demo::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, VALID);
    let report = dir.path().join("report.txt");
    std::fs::write(&report, "No change.").unwrap();
    let client_commands: &[&[&str]] = &[
        &["orders", "list"],
        &["orders", "list", "--format", "json"],
        &["orders", "get", "A100003", "--as", "hl7-orm"],
        &["orders", "get", "A100003", "--format", "json"],
        &["orders", "stream"],
        &["orders", "stream", "--format", "json"],
        &["oru", "submit", ORU, "--show-ack"],
        &["oru", "submit", ORU, "--format", "json"],
        &["outbox", "list"],
        &["outbox", "list", "--format", "json"],
        &["outbox", "show", "1"],
        &["outbox", "show", "1", "--format", "json"],
        &["outbox", "retry", "--all-dead"],
        &["outbox", "purge", "--state", "dead", "--older-than", "0s"],
        &["feed", "status"],
        &["feed", "status", "--format", "json"],
        &["feed", "retry", "--destination", "demo-listener"],
        &["feed", "resend", "--domain", "acme", "--dry-run"],
        &[
            "feed",
            "resend",
            "--domain",
            "acme",
            "--dry-run",
            "--format",
            "json",
        ],
        &[
            "feed", "watch", "--domain", "acme", "--after", "0", "--count", "2",
        ],
        &["mllp", "send", "--to", &demo.mllp, ORU],
        &["mllp", "send", "--to", &demo.mllp, ORU, "--format", "json"],
    ];
    let local_commands: &[&[&str]] = &[
        &["mappings", "check"],
        &["mappings", "check", "--format", "json"],
        &["mappings", "test"],
        &["mappings", "test", "--format", "json"],
        &["map", "--mapping", "orm_o01", "--input", ORDER],
        &[
            "map",
            "--mapping",
            "orm_o01",
            "--input",
            ORDER,
            "--format",
            "json",
        ],
        &["map", "--mapping", "service_request", "--input", ORDER],
        &["grpc", "new-token"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["man"],
        &["--help"],
        &["orders", "list", "--help"],
        &["--version"],
    ];
    let mut failures = Vec::new();
    let mut check = |name: String, cmd: Command| {
        let (code, err) = with_closed_stdout(cmd);
        if code != Some(0) || err.contains("panicked") || err.contains("error") {
            failures.push(format!("{name}: exit {code:?}, stderr {err:?}"));
        }
    };
    for args in client_commands {
        let mut cmd = client_of(&demo);
        cmd.args(*args);
        check(args.join(" "), cmd);
    }
    let mut cmd = client_of(&demo);
    cmd.args([
        "report",
        "submit",
        "--appointment",
        "A100002",
        "--status",
        "final",
    ])
    .arg("--text-file")
    .arg(&report);
    check("report submit".into(), cmd);
    for args in local_commands {
        let mut cmd = bridge();
        cmd.args(*args);
        check(args.join(" "), cmd);
    }
    let mut cmd = bridge();
    cmd.args(["config", "check"])
        .arg(&config)
        .env("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x");
    check("config check".into(), cmd);
    // The servers: nobody reads their banner, so they stop (gracefully) and say nothing.
    let mut cmd = bridge();
    cmd.args(["serve", "--demo", "--feed-to", "127.0.0.1:9"])
        .env("QUBS_BRIDGE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__SERVER__GRPC_LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__MLLP__LISTEN", "127.0.0.1:0")
        .env("QUBS_BRIDGE__TELEMETRY__LOG_FILTER", "off");
    check("serve --demo".into(), cmd);
    let mut cmd = bridge();
    cmd.args(["simulator", "--port", "0"])
        .env("RUST_LOG", "off");
    check("simulator".into(), cmd);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_reader_that_stops_early_stops_a_long_stream() {
    let demo = Demo::start();
    // 40 orders in three documents each: more than a pipe holds, so the writer is still
    // writing when the reader goes.
    let mut child = client_of(&demo)
        .args(["orders", "stream", "--format", "json"])
        .args([
            "--as",
            "fhir-service-request",
            "--as",
            "hl7-orm",
            "--as",
            "source-json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let order: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(order["outputs"].as_array().unwrap().len(), 3);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");

    // `mllp listen` stops at the first message it cannot print, without acknowledging it:
    // the sender keeps the message.
    let mut listener = bridge()
        .args(["mllp", "listen", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(listener.stdout.take());
    let mut notes = BufReader::new(listener.stderr.take().unwrap());
    let mut banner = String::new();
    notes.read_line(&mut banner).unwrap();
    let addr = banner.split_whitespace().nth(4).unwrap().to_string();
    let (code, out, _) = run(bridge().args(["mllp", "send", "--to", &addr, ORU]));
    assert_eq!(code, 69, "no ACK: the peer went away; {out}");
    assert_eq!(
        wait_exit(&mut listener, Duration::from_secs(10)).code(),
        Some(0)
    );
    let mut rest = String::new();
    notes.read_to_string(&mut rest).unwrap();
    assert!(
        !rest.contains("panicked") && !rest.contains("error"),
        "{rest}"
    );
}

/// Each `: `-separated part of an error line appears once, and so does each id in it.
fn said_once(line: &str) {
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "`{p}` is said twice in {line:?}"
        );
    }
    for word in line.split([' ', '[', ']', '(', ')']) {
        // UUIDs: correlation and request ids.
        if word.len() == 36 && word.matches('-').count() == 4 {
            assert_eq!(line.matches(word).count(), 1, "{word} twice in {line:?}");
        }
    }
}

#[test]
fn errors_are_one_line_said_once_with_an_exit_status_for_scripts() {
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let (code, out, err) = run(bridge()
        .args(["orders", "list", "--server", &server])
        .env("QUBS_BRIDGE_TOKEN", "demo-token"));
    assert_eq!(code, 69, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot connect to the bridge at {server}: Connection refused (os error 111) (is `qubs-bridge serve` running there?"
        )),
        "{err}"
    );
    said_once(err.trim());
    let (code, _, err) =
        run(bridge().args(["mllp", "send", "--to", &format!("127.0.0.1:{port}"), ORU]));
    assert_eq!(code, 69, "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "error: cannot connect to the MLLP receiver at 127.0.0.1:{port}: MLLP connect failed: Connection refused (os error 111)"
        )
    );

    let demo = Demo::start();
    let (code, _, err) = run(client_of(&demo)
        .args(["orders", "list"])
        .env("QUBS_BRIDGE_TOKEN", "wrong"));
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err.trim(),
        "error: the bridge did not accept the credentials (UNAUTHENTICATED: unknown bearer token); give the caller's token with --token or QUBS_BRIDGE_TOKEN"
    );
    let (code, _, err) = run(client_of(&demo)
        .args(["orders", "list"])
        .env_remove("QUBS_BRIDGE_TOKEN"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: the bridge did not accept the credentials (UNAUTHENTICATED: "),
        "{err}"
    );
    said_once(err.trim());
    let (code, _, err) = run(client_of(&demo).args(["orders", "list", "--domain", "globex"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: PERMISSION_DENIED: "), "{err}");
    // QUBS unreachable behind the bridge (UNAVAILABLE): retryable, like the bridge itself.
    let fault = serde_json::json!({
        "path_contains": "/appointments/A100004",
        "fault": {"kind": "drop_connection"},
    });
    let added = reqwest::blocking::Client::new()
        .post(format!("{}/_simulator/faults", demo.simulator))
        .json(&fault)
        .send()
        .unwrap();
    assert!(added.status().is_success());
    let (code, _, err) = run(client_of(&demo).args(["orders", "get", "A100004"]));
    assert_eq!(code, 69, "{err}");
    assert!(err.starts_with("error: UNAVAILABLE: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    said_once(err.trim());
    let (code, _, err) = run(client_of(&demo).args(["orders", "get", "NOSUCH1"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    said_once(err.trim());

    // Usage: clap's own checks, and the ones it cannot make.
    for (args, message) in [
        (
            &["orders", "list", "--format", "yaml"][..],
            "invalid value 'yaml'",
        ),
        (
            &["outbox", "retry"][..],
            "error: give entry ids, or --all-dead",
        ),
        (
            &["orders", "list", "--server", "127.0.0.1:50051"][..],
            "is not a gRPC address",
        ),
        (
            &["oru", "submit", "no-such-file.hl7"][..],
            "error: no-such-file.hl7: No such file",
        ),
        (
            &["map", "--mapping", "nope", "--input", ORDER][..],
            "error: no mapping `nope`",
        ),
    ] {
        let (code, _, err) = run(client_of(&demo).args(args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // The operation failed: here, a refused result.
    let (code, out, err) = run(client_of(&demo).args(["oru", "submit", "--format", "json", ORU]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["ackCode"],
        "AA"
    );
    let dir = tempfile::tempdir().unwrap();
    let prelim = dir.path().join("prelim.hl7");
    std::fs::write(
        &prelim,
        std::fs::read_to_string(ORU)
            .unwrap()
            .replace("DEMO0001", "DEMO0002")
            .replace("|F|||||||2045671A", "|P|||||||2045671A"),
    )
    .unwrap();
    let (code, _, err) = run(client_of(&demo).arg("oru").arg("submit").arg(&prelim));
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim(), "error: 1 of 1 message(s) not accepted");

    // --help documents the statuses, as EXIT_CODES lists them.
    let (_, help, _) = run(bridge().arg("--help"));
    for (code, meaning) in qubs_bridge::cli::exit::EXIT_CODES {
        assert!(help.contains(&format!("{code:<3} {meaning}")), "{help}");
    }
}

#[test]
fn every_record_command_prints_one_json_object_per_line() {
    let demo = Demo::start();
    let lines = |args: &[&str]| -> Vec<Value> {
        let (code, out, err) = run(client_of(&demo).args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {l}"));
                assert!(v.is_object(), "{args:?}: {l}");
                v
            })
            .collect()
    };
    let page = lines(&["orders", "list", "--page-size", "7", "--format", "json"]);
    assert_eq!(page.len(), 7, "one line per order, nothing else");
    assert!(page.iter().all(|o| o["appointmentId"].is_string()));
    let all = lines(&["orders", "stream", "--format", "json"]);
    assert_eq!(all.len(), 40);
    let one = lines(&[
        "orders", "get", "A100003", "--as", "hl7-orm", "--format", "json",
    ]);
    assert_eq!(one.len(), 1);
    assert!(
        one[0]["outputs"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("MSH|")
    );
    let sent = lines(&["oru", "submit", ORU, "--format", "json"]);
    assert_eq!(sent[0]["ackCode"], "AA");
    let entries = lines(&["outbox", "list", "--format", "json"]);
    assert_eq!(entries.len(), 1);
    let id = entries[0]["id"].to_string();
    assert_eq!(
        lines(&["outbox", "show", &id, "--format", "json"])[0]["appointmentId"],
        "A100001"
    );
    assert_eq!(
        lines(&["outbox", "retry", "--all-dead", "--format", "json"]),
        [serde_json::json!({"requeued": 0})]
    );
    assert_eq!(
        lines(&[
            "outbox",
            "purge",
            "--state",
            "dead",
            "--older-than",
            "0s",
            "--format",
            "json"
        ]),
        [serde_json::json!({"purged": 0})]
    );
    let status = lines(&["feed", "status", "--format", "json"]);
    assert_eq!(status[0]["destinations"][0]["name"], "demo-listener");
    assert_eq!(
        lines(&[
            "feed",
            "retry",
            "--destination",
            "demo-listener",
            "--format",
            "json"
        ])[0]["requeued"],
        0
    );
    let events = lines(&[
        "feed", "watch", "--domain", "acme", "--after", "0", "--count", "3", "--format", "json",
    ]);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["kind"] == "new"));
    let acks = lines(&["mllp", "send", "--to", &demo.mllp, ORU, "--format", "json"]);
    assert_eq!(
        acks[0]["ackCode"], "AA",
        "a retransmission is accepted again"
    );
    assert!(acks[0]["ack"].as_str().unwrap().contains("MSA|AA|DEMO0001"));
    let check = lines(&["mappings", "check", "--format", "json"]);
    assert_eq!(check[0]["ok"], true);
    assert_eq!(check[0]["mappings"].as_array().unwrap().len(), 5);
    let cases = lines(&["mappings", "test", "--format", "json"]);
    assert!(cases.len() > 3);
    assert!(cases.iter().all(|c| c["status"] == "ok"), "{cases:?}");
    let envelope = lines(&[
        "map",
        "--mapping",
        "service_request",
        "--input",
        ORDER,
        "--format",
        "json",
    ]);
    assert_eq!(envelope[0]["output"]["resourceType"], "ServiceRequest");
}

#[test]
fn mappings_check_names_every_problem_in_json_too() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("mappings").unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let tables = dir.path().join("tables");
    std::fs::create_dir(&tables).unwrap();
    for entry in std::fs::read_dir("mappings/tables").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tables.join(path.file_name().unwrap())).unwrap();
    }
    let sr = dir.path().join("service_request.yaml");
    let text = std::fs::read_to_string(&sr).unwrap();
    // Where the misspelt target will be (1-based line; the column of `intnet`).
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            l.find("target: intent")
                .map(|c| (i as u64 + 1, c as u64 + 9))
        })
        .expect("service_request.yaml has an intent rule");
    std::fs::write(&sr, text.replace("target: intent", "target: intnet")).unwrap();
    let (code, out, err) = run(bridge()
        .args(["mappings", "check", "--format", "json"])
        .arg(dir.path()));
    assert_eq!(code, 1, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    let problems = report["problems"].as_array().unwrap();
    let problem = problems
        .iter()
        .find(|p| p["message"].as_str().unwrap().contains("`intnet`"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        problem["file"]
            .as_str()
            .unwrap()
            .ends_with("service_request.yaml")
    );
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(line), Some(column))
    );
    assert!(
        err.contains(&format!("{} problem(s) in", problems.len())),
        "{err}"
    );

    // In text, each problem once on stderr, then the count once.
    let (code, _, err) = run(bridge().args(["mappings", "check"]).arg(dir.path()));
    assert_eq!(code, 1);
    assert_eq!(
        err.matches(&format!("service_request.yaml:{line}:{column}: error:"))
            .count(),
        1,
        "{err}"
    );
    assert_eq!(err.matches("problem(s)").count(), 1, "{err}");
    assert!(!err.contains("error(s) in mapping files"), "{err}");
}

#[test]
fn colour_only_on_request_and_never_with_no_color() {
    let args = ["orders", "list", "--server", "http://127.0.0.1:1"];
    let (_, _, plain) = run(bridge().args(args));
    assert!(
        !plain.contains('\x1b'),
        "not a terminal: no colour: {plain:?}"
    );
    let (_, _, forced) = run(bridge().args(args).env("CLICOLOR_FORCE", "1"));
    assert!(forced.contains("\x1b["), "{forced:?}");
    let (_, _, no_color) = run(bridge()
        .args(args)
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1"));
    assert!(!no_color.contains('\x1b'), "{no_color:?}");
    assert_eq!(no_color, plain);
}

#[test]
fn progress_stays_off_stderr_that_is_not_a_terminal() {
    let demo = Demo::start();
    let (code, out, err) = run(client_of(&demo).args(["orders", "stream"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 41, "a header and 40 orders");
    // The closing count only: no progress line, no escape codes.
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("40 orders in "), "{err:?}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
}

/// Every command path (`orders list`...), with its long options.
fn command_paths() -> Vec<(String, Vec<String>)> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, Vec<String>)>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = format!("{prefix}{}", sub.get_name()).trim().to_string();
            let longs = sub
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect();
            out.push((path.clone(), longs));
            walk(sub, &format!("{path} "), out);
        }
    }
    let mut root = qubs_bridge::cli::command();
    root.build();
    let mut out = Vec::new();
    walk(&root, "", &mut out);
    out
}

#[test]
fn completions_and_man_pages_cover_every_command_and_option() {
    let paths = command_paths();
    assert!(paths.len() > 30, "{paths:?}");
    // How each shell's script spells a long option.
    type Spelling = fn(&str) -> String;
    let spelled: [(&str, Spelling); 4] = [
        ("bash", |l| format!("--{l}")),
        ("zsh", |l| format!("--{l}")),
        ("fish", |l| format!("-l {l}")),
        ("powershell", |l| format!("'--{l}'")),
    ];
    for (shell, spell) in spelled {
        let (code, script, err) = run(bridge().args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {err}");
        for (path, longs) in &paths {
            let name = path.rsplit(' ').next().unwrap();
            assert!(script.contains(name), "{shell}: no `{path}`");
            for long in longs {
                assert!(
                    script.contains(&spell(long)),
                    "{shell}: `{path} --{long}` missing"
                );
            }
        }
    }
    let (code, _, err) = run(bridge().args(["completions", "tcsh"]));
    assert_eq!(code, 2, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (code, listed, err) = run(bridge().args(["man", "--dir"]).arg(dir.path()));
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed.lines().count(), paths.len() + 1, "{listed}");
    for (path, longs) in &paths {
        let file = dir
            .path()
            .join(format!("qubs-bridge-{}.1", path.replace(' ', "-")));
        let page =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for long in longs {
            // roff writes `-` as `\-`.
            let roff = format!("--{long}").replace('-', "\\-");
            assert!(page.contains(&roff), "{}: no --{long}", file.display());
        }
    }
    let main = std::fs::read_to_string(dir.path().join("qubs-bridge.1")).unwrap();
    let (_, printed, _) = run(bridge().arg("man"));
    assert_eq!(printed, main, "`man` prints the page `man --dir` writes");
    assert!(main.contains(".SH \"EXIT STATUS\""), "{main}");
    let readme = std::fs::read_to_string("README.md")
        .unwrap()
        .replace("\\|", "|");
    for (code, meaning) in qubs_bridge::cli::exit::EXIT_CODES {
        assert!(main.contains(&format!("\\fB{code}\\fR")), "{main}");
        assert!(
            readme.contains(&format!("| {code} | {meaning} |")),
            "README's exit status table lacks {code}: {meaning}"
        );
    }
    for (path, _) in &paths {
        let top = path.split(' ').next().unwrap();
        assert!(main.contains(top), "the main page lists `{top}`");
    }
}

/// README's block of pipelines (the one after "these work as written"), each line run by
/// bash against the demo, `qubs-bridge` and `jq` on the PATH.
#[test]
fn the_readme_pipelines_work_as_written() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let start = readme
        .find("these work as written")
        .expect("README's pipelines");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let pipelines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(pipelines.len() >= 8, "{pipelines:?}");
    for p in &pipelines {
        assert!(p.starts_with("qubs-bridge "), "{p}");
    }

    // `qubs-bridge` and a `jq` (jq's engine, from the test venv) first on the PATH.
    let bin = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_qubs-bridge"));
    let shim = std::fs::canonicalize("tests/python/jq_shim.py").unwrap();
    let jq = bin.path().join("jq");
    std::fs::write(
        &jq,
        format!(
            "#!/bin/sh\nexec '{}' '{}' \"$@\"\n",
            common::python::python().display(),
            shim.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&jq).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&jq, perms).unwrap();
    let path = format!(
        "{}:{}:{}",
        bin.path().display(),
        exe.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let demo = Demo::start();
    for pipeline in pipelines {
        // The status of the bridge's own command, whatever `head` did to the others.
        let (code, out, err) = run(Command::new("bash")
            .arg("-c")
            .arg(format!("{pipeline}\nexit ${{PIPESTATUS[0]}}"))
            .env("PATH", &path)
            .env("QUBS_BRIDGE_SERVER", &demo.server)
            .env("QUBS_BRIDGE_TOKEN", "demo-token")
            .env_remove("QUBS_BRIDGE_DOMAIN"));
        assert_eq!(code, 0, "{pipeline}\n{err}");
        assert!(!out.trim().is_empty(), "{pipeline}: nothing printed\n{err}");
        assert!(
            !err.contains("error") && !err.contains("panicked") && !err.contains("jq_shim"),
            "{pipeline}\n{err}"
        );
    }
}
