//! Bad input at every entry point: MLLP frames, gRPC calls, mapping files and QUBS responses.
//!
//! One table per entry point; each row names a malformed input and the exact answer it must
//! get (ACK code and ERR, gRPC status and message fragment, diagnostic position and text,
//! QUBS client error). Every row runs even when an earlier one fails, and failures are
//! reported by row name. Around the tables, one test checks what must hold for all of them:
//!
//! - **No panic**: a panic hook counts panics on every thread (connection tasks included).
//!   Both this and the peak memory are the process's, so the test runs alone (it lives in
//!   the `exclusive` test binary and takes its turn there).
//! - **Nothing already accepted is lost**: a valid ORU is accepted (AA) first; after all the
//!   bad input it was submitted to QUBS exactly once, and the service still accepts new
//!   results over MLLP and gRPC.
//! - **Memory bounded**: the bridge runs in this process, so the process's peak resident
//!   size (`VmHWM`, reset first) covers it, measured once the tables (and the test's copies of the big
//!   inputs) exist. The inputs include a 10 MB message, a 13 MB frame, 11–13 MB gRPC
//!   messages, a 10 MB line-break-escape bomb and a 70 MB QUBS body; if any of them were
//!   buffered whole more than a few times, or expanded, the peak would grow by hundreds of
//!   MB (the escape bomb alone once added 310 MB). The bound, 200 MB over the starting
//!   peak, leaves room for the few transient copies that bounded handling still makes of a
//!   10–13 MB input (gRPC decoding, parsing, mapping) and for the 64 MB the QUBS client may
//!   read before it refuses a body.
//! - **No PHI in answers**: every input carries a patient name and report text; no answer
//!   may contain them.

use crate::common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Bridge, GRPC_TOKEN, authed, pending, start_bridge};
use qubs_bridge::grpc::pb::mapping_service_client::MappingServiceClient;
use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
use qubs_bridge::grpc::pb::outbox_service_client::OutboxServiceClient;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::grpc::pb::{
    GetAttachmentContentRequest, GetOrderRequest, GetOutboxEntryRequest, ListOutboxRequest,
    ListPendingOrdersRequest, PreviewMappingRequest, PurgeOutboxRequest, RetryOutboxRequest,
    StreamPendingOrdersRequest, SubmitDiagnosticReportRequest, SubmitOruRequest,
    SubmitReportRequest,
};
use qubs_bridge::mapping::MappingSet;
use qubs_bridge::simulator::Simulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// PHI that every input carries somewhere; no answer may repeat it.
const PATIENT: &str = "Wilhelmina^Thistlewood";
const PATIENT_TEXT: &str = "Thistlewood";
const REPORT_TEXT: &str = "Cavernous haemangioma of the left hepatic lobe";

/// The limits the bridge under test runs with (smaller than the defaults, so that the
/// oversize rows stay quick).
const MAX_FRAME: usize = 12 * 1024 * 1024;
const MAX_GRPC: usize = 12 * 1024 * 1024;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// Peak resident set size of this process, in bytes.
fn vm_hwm() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Matches `actual` against `expected`: exact, or a prefix when `expected` ends in `…`.
fn matches(actual: &str, expected: &str) -> bool {
    match expected.strip_suffix('…') {
        Some(prefix) => actual.starts_with(prefix),
        None => actual == expected,
    }
}

fn phi_in(text: &str) -> bool {
    text.contains(PATIENT_TEXT) || text.contains(REPORT_TEXT)
}

// ---- messages -----------------------------------------------------------------------------

/// An ORU^R01 with `msh` as its MSH segment and `obx5` as the report text.
fn oru_with(msh: &str, appointment: &str, status: &str, obx5: &str) -> Vec<u8> {
    [
        msh.to_string(),
        format!("PID|1||P1^^^acme^MR||{PATIENT}||19440229|F"),
        format!("ORC|RE|{appointment}"),
        format!(
            "OBR|1|{appointment}||CT^CT|||20261127090000|||||||||||||||202611270930|||{status}"
        ),
        format!("OBX|1|TX|||{obx5}||||||F"),
    ]
    .join("\r")
    .into_bytes()
}

fn msh(control_id: &str) -> String {
    format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1")
}

/// A valid ORU for `appointment`, except for what the row changes.
fn oru(control_id: &str, appointment: &str, status: &str) -> Vec<u8> {
    oru_with(&msh(control_id), appointment, status, REPORT_TEXT)
}

fn with_sep(message: Vec<u8>, sep: &str) -> Vec<u8> {
    String::from_utf8(message)
        .unwrap()
        .replace('\r', sep)
        .into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---- MLLP -----------------------------------------------------------------------------------

enum MllpExpect {
    /// One ACK with this MSA and ERR (exact, `…` for a prefix, empty for no ERR).
    Ack {
        msa: &'static str,
        err: &'static str,
    },
    /// No answer; a probe frame sent next on the same connection is answered.
    Ignored,
    /// The connection is closed without an answer.
    Closed,
}

struct MllpCase {
    name: &'static str,
    /// Bytes written to a fresh connection.
    wire: Vec<u8>,
    /// Half-close the connection after writing.
    shutdown: bool,
    expect: MllpExpect,
}

fn framed(payload: &[u8]) -> Vec<u8> {
    cat(&[b"\x0b", payload, b"\x1c\x0d"])
}

fn ack(name: &'static str, payload: Vec<u8>, msa: &'static str, err: &'static str) -> MllpCase {
    MllpCase {
        name,
        wire: framed(&payload),
        shutdown: false,
        expect: MllpExpect::Ack { msa, err },
    }
}

const BAD_MSH2: &str =
    "ERR|||100^Segment sequence error^HL70357|E||||MSH-2 encoding characters invalid…";
const NO_MSH: &str = "ERR|||100^Segment sequence error^HL70357|E||||no readable MSH segment: this is not an HL7 v2 message";

fn mllp_cases() -> Vec<MllpCase> {
    let big_text = "x".repeat(10 * 1024 * 1024);
    let sp_bomb = "\\.sp99\\".repeat(10 * 1024 * 1024 / 7);
    let mut thousands_of_obx = oru("MANYOBX", "A0009", "F");
    for i in 2..=5000 {
        thousands_of_obx.extend_from_slice(format!("\rOBX|{i}|TX|||line {i}||||||F").as_bytes());
    }
    let mut thousands_no_obr = msh("MANYNTE").into_bytes();
    thousands_no_obr.extend_from_slice(format!("\rPID|1||P1||{PATIENT}").as_bytes());
    for i in 1..=20_000 {
        thousands_no_obr.extend_from_slice(format!("\rNTE|{i}||note").as_bytes());
    }
    let oversize = {
        let mut m = oru("BIG13", "A0001", "F");
        m.extend_from_slice(b"\rOBX|2|TX|||");
        m.resize(13 * 1024 * 1024, b'y');
        m
    };
    let all_bytes: Vec<u8> = (0u8..=255).filter(|b| *b != 0x0b && *b != 0x1c).collect();
    vec![
        // Frames with nothing HL7 in them.
        ack("empty frame", Vec::new(), "MSA|AR|", NO_MSH),
        ack("only junk text", b"hello there".to_vec(), "MSA|AR|", NO_MSH),
        ack("only NUL bytes", vec![0; 512], "MSA|AR|", NO_MSH),
        ack("every byte value", all_bytes, "MSA|AR|", NO_MSH),
        ack(
            "invalid UTF-8 only",
            vec![0xff, 0xfe, 0xc3, 0x28, 0xa0],
            "MSA|AR|",
            NO_MSH,
        ),
        ack("BOM then junk", "\u{feff}junk".into(), "MSA|AR|", NO_MSH),
        ack(
            "only line breaks",
            b"\r\n\r\n\n\r".to_vec(),
            "MSA|AR|",
            NO_MSH,
        ),
        ack(
            "missing MSH: PID first",
            oru("X", "A0001", "F")[msh("X").len() + 1..].to_vec(),
            "MSA|AR|",
            NO_MSH,
        ),
        ack("MSH alone", b"MSH".to_vec(), "MSA|AR|", NO_MSH),
        ack(
            "MSH followed by a line break",
            cat(&[b"MSH\r", &oru("X", "A0001", "F")[msh("X").len()..]]),
            "MSA|AR|",
            BAD_MSH2,
        ),
        ack(
            "MSH with CRLF and nothing else",
            b"MSH\r\n".to_vec(),
            "MSA|AR|",
            NO_MSH,
        ),
        // MSH-1/MSH-2 that cannot be delimiters.
        ack(
            "MSH-1 and MSH-2 missing",
            oru_with(
                "MSH||RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01|ENC1|P|2.5.1",
                "A0001",
                "F",
                "t",
            ),
            "MSA|AR|",
            BAD_MSH2,
        ),
        ack(
            "MSH-2 with a repeated character",
            oru_with(&msh("ENC2").replace("^~\\&", "^^\\&"), "A0001", "F", "t"),
            "MSA|AR|",
            BAD_MSH2,
        ),
        ack(
            "`|` as component separator",
            oru_with(&msh("ENC3").replace("^~\\&", "|~\\&"), "A0001", "F", "t"),
            "MSA|AR|",
            BAD_MSH2,
        ),
        ack(
            "six encoding characters",
            oru_with(&msh("ENC4").replace("^~\\&", "^~\\&#!"), "A0001", "F", "t"),
            "MSA|AR|",
            BAD_MSH2,
        ),
        ack(
            "letters as encoding characters",
            oru_with(&msh("ENC5").replace("^~\\&", "abcd"), "A0001", "F", "t"),
            "MSA|AR|",
            BAD_MSH2,
        ),
        ack(
            "a letter as field separator",
            oru_with(&msh("ENC6").replace('|', "X"), "A0001", "F", "t"),
            "MSA|AR|",
            BAD_MSH2,
        ),
        // 2.7's fifth encoding character (truncation) is read and ignored.
        ack(
            "five encoding characters (truncation #)",
            oru_with(
                &msh("ENC7").replace("^~\\&", "^~\\&#"),
                "A0002",
                "F",
                REPORT_TEXT,
            ),
            "MSA|AA|ENC7",
            "",
        ),
        // Not an ORU^R01.
        ack(
            "ADT^A01",
            oru_with(
                &msh("T1").replace("ORU^R01^ORU_R01", "ADT^A01"),
                "A0001",
                "F",
                "t",
            ),
            "MSA|AR|T1",
            "ERR|||200^Unsupported message type^HL70357|E||||message type ADT\\S\\A01 is not accepted here; send ORU\\S\\R01",
        ),
        ack(
            "ORM^O01",
            oru_with(
                &msh("T2").replace("ORU^R01^ORU_R01", "ORM^O01"),
                "A0001",
                "F",
                "t",
            ),
            "MSA|AR|T2",
            "ERR|||200^Unsupported message type^HL70357|E||||message type ORM\\S\\O01 is not accepted here; send ORU\\S\\R01",
        ),
        ack(
            "ORU without a trigger event",
            oru_with(
                &msh("T3").replace("ORU^R01^ORU_R01", "ORU"),
                "A0001",
                "F",
                "t",
            ),
            "MSA|AR|T3",
            "ERR|||201^Unsupported event code^HL70357|E||||message type ORU\\S\\ is not accepted here; send ORU\\S\\R01",
        ),
        ack(
            "MSH-9 empty",
            oru_with(&msh("T4").replace("ORU^R01^ORU_R01", ""), "A0001", "F", "t"),
            "MSA|AR|T4",
            "ERR||MSH^1^9|101^Required field missing^HL70357|E||||MSH-9 (message type) is empty; send ORU\\S\\R01",
        ),
        MllpCase {
            name: "an ACK sent to the receiver",
            wire: framed(
                b"MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093001||ACK^R01^ACK|X1|P|2.5.1\rMSA|AA|Q1",
            ),
            shutdown: false,
            expect: MllpExpect::Ignored,
        },
        ack(
            "missing MSH-10",
            oru("", "A0001", "F"),
            "MSA|AR|",
            "ERR||MSH^1^10|101^Required field missing^HL70357|E||||MSH-10 (message control id) is empty: the sender could not match this acknowledgement",
        ),
        // Framing bytes and control characters echoed back in the ACK.
        ack(
            "MSH-10 ending in the end-of-block byte",
            oru_with(&msh("C1\x1c"), "A0001", "X", "t"),
            "MSA|AE|C1\\X1C\\",
            "ERR||OBR^1^25|103^Table value not found^HL70357|E||||…",
        ),
        ack(
            "MSH-12 ending in the end-of-block byte",
            oru_with(
                &msh("C2").replace("|2.5.1", "|2.5.1\x1c|||"),
                "A0001",
                "X",
                "t",
            ),
            "MSA|AE|C2",
            "ERR||OBR^1^25|103^Table value not found^HL70357|E||||…",
        ),
        // Content inside OBX-5.
        ack(
            "escaped delimiters inside OBX-5",
            oru_with(
                &msh("D1"),
                "A0003",
                "F",
                "a \\F\\ b \\S\\ c \\T\\ d \\R\\ e \\E\\ f",
            ),
            "MSA|AA|D1",
            "",
        ),
        ack(
            "raw repetition and component separators inside OBX-5",
            oru_with(&msh("D2"), "A0004", "F", "first~second^third&fourth"),
            "MSA|AA|D2",
            "",
        ),
        ack(
            "unterminated escape sequence",
            oru_with(&msh("D3"), "A0005", "F", "text \\X41 and \\H"),
            "MSA|AA|D3",
            "",
        ),
        ack(
            "invalid UTF-8 in OBX-5 (read as Windows-1252)",
            cat(&[
                &oru_with(&msh("D4"), "A0006", "F", "M")[..],
                b"\xfcller \xff",
            ]),
            "MSA|AA|D4",
            "",
        ),
        ack(
            "NUL bytes inside OBX-5",
            oru_with(&msh("D5"), "A0007", "F", "before\0\0after"),
            "MSA|AA|D5",
            "",
        ),
        ack(
            "thousands of OBX segments",
            thousands_of_obx,
            "MSA|AA|MANYOBX",
            "",
        ),
        ack(
            "twenty thousand segments and no OBR",
            thousands_no_obr,
            "MSA|AR|MANYNTE",
            "ERR|||100^Segment sequence error^HL70357|E||||message MANYNTE: no OBR segment: an ORU\\S\\R01 needs at least one ORDER_OBSERVATION group",
        ),
        ack(
            "very long PID-5 (1 MB)",
            String::from_utf8(oru("LONG1", "A0001", "X"))
                .unwrap()
                .replace(PATIENT, &PATIENT.repeat(1024 * 1024 / PATIENT.len()))
                .into_bytes(),
            "MSA|AE|LONG1",
            "ERR||OBR^1^25|103^Table value not found^HL70357|E||||…",
        ),
        ack(
            "very long MSH-10",
            oru(&"9".repeat(300), "A0001", "F"),
            "MSA|AR|…",
            "ERR||MSH^1^10|102^Data type error^HL70357|E||||MSH-10 (message control id) is 300 characters long; at most 199 are allowed",
        ),
        ack(
            "10 MB message",
            oru_with(&msh("BIG10"), "A0001", "F", &big_text),
            "MSA|AE|BIG10",
            "ERR||OBX^1^5|207^Application internal error^HL70357|E||||…",
        ),
        ack(
            "10 MB of line-break escapes",
            oru_with(&msh("SPBOMB"), "A0001", "F", &sp_bomb),
            "MSA|AE|SPBOMB",
            "ERR||OBX^1^5|207^Application internal error^HL70357|E||||…",
        ),
        ack(
            "frame over mllp.max_frame_bytes",
            oversize,
            "MSA|AR|BIG13",
            "ERR|||207^Application internal error^HL70357|E||||message of 13631488 bytes is larger than this receiver takes (12582912 bytes)",
        ),
        // Separators.
        ack(
            "LF separators",
            with_sep(oru("S1", "A0008", "F"), "\n"),
            "MSA|AA|S1",
            "",
        ),
        ack(
            "BOM and CRLF separators",
            cat(&[
                "\u{feff}".as_bytes(),
                &with_sep(oru("S2", "A0010", "F"), "\r\n"),
            ]),
            "MSA|AA|S2",
            "",
        ),
        ack(
            "mixed separators and blank lines",
            with_sep(oru("S3", "A0011", "F"), "\r\r\n\n"),
            "MSA|AA|S3",
            "",
        ),
        // Framing faults.
        MllpCase {
            name: "end marker without a start byte",
            wire: cat(&[b"junk before", &oru("F1", "A0001", "F"), b"\x1c\x0d"]),
            shutdown: false,
            expect: MllpExpect::Ignored,
        },
        MllpCase {
            name: "start byte inside a frame restarts it",
            wire: cat(&[b"\x0bpartial junk", &framed(&oru("F2", "A0001", "X"))]),
            shutdown: false,
            expect: MllpExpect::Ack {
                msa: "MSA|AE|F2",
                err: "ERR||OBR^1^25|103^Table value not found^HL70357|E||||…",
            },
        },
        MllpCase {
            name: "start byte, no end, sender closes",
            wire: cat(&[b"\x0b", &oru("F3", "A0001", "F")]),
            shutdown: true,
            expect: MllpExpect::Closed,
        },
        MllpCase {
            name: "start byte, no end, sender waits",
            wire: cat(&[b"\x0b", &oru("F4", "A0001", "F")]),
            shutdown: false,
            expect: MllpExpect::Closed,
        },
    ]
}

/// Reads one frame's payload; `None` when the peer closed first.
async fn read_frame(stream: &mut TcpStream, within: Duration) -> Result<Option<Vec<u8>>, String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = reply.windows(2).position(|w| w == [0x1c, 0x0d]) {
                let start = reply.iter().position(|&b| b == 0x0b).unwrap_or(0);
                return Ok(Some(reply[start + 1..end].to_vec()));
            }
            match stream.read(&mut buf).await {
                Ok(0) if reply.is_empty() => return Ok(None),
                Ok(0) => return Err(format!("closed mid-reply after {} bytes", reply.len())),
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                // A reset after the server closed counts as closed.
                Err(_) if reply.is_empty() => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

fn segment(ack: &str, id: &str) -> String {
    ack.split('\r')
        .find(|s| s.starts_with(id))
        .unwrap_or_default()
        .to_string()
}

async fn run_mllp(bridge: &Bridge, case: &MllpCase) -> Result<(), String> {
    let addr = bridge.service.mllp_addr.expect("MLLP enabled");
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(&case.wire)
        .await
        .map_err(|e| format!("write: {e}"))?;
    if case.shutdown {
        stream.shutdown().await.map_err(|e| e.to_string())?;
    }
    match &case.expect {
        MllpExpect::Ack { msa, err } => {
            let reply = read_frame(&mut stream, Duration::from_secs(30))
                .await?
                .ok_or("closed without an ACK")?;
            let text = String::from_utf8_lossy(&reply).to_string();
            if phi_in(&text) {
                return Err(format!("PHI in the ACK: {text}"));
            }
            let (got_msa, got_err) = (segment(&text, "MSA|"), segment(&text, "ERR|"));
            if !text.starts_with("MSH|") || !matches(&got_msa, msa) || !matches(&got_err, err) {
                return Err(format!(
                    "\n  MSA {}\n  want {msa}\n  ERR {}\n  want {err}",
                    truncate(&got_msa),
                    truncate(&got_err)
                ));
            }
            Ok(())
        }
        MllpExpect::Ignored => {
            let probe = oru_with(
                &msh("PROBE").replace("ORU^R01^ORU_R01", "ADT^A01"),
                "A0001",
                "F",
                "t",
            );
            stream
                .write_all(&framed(&probe))
                .await
                .map_err(|e| e.to_string())?;
            let reply = read_frame(&mut stream, Duration::from_secs(10))
                .await?
                .ok_or("closed instead of answering the probe")?;
            let msa = segment(&String::from_utf8_lossy(&reply), "MSA|");
            if msa != "MSA|AR|PROBE" {
                return Err(format!("the first answer is not the probe's: {msa}"));
            }
            Ok(())
        }
        MllpExpect::Closed => match read_frame(&mut stream, Duration::from_secs(10)).await? {
            None => Ok(()),
            Some(reply) => Err(format!(
                "answered instead of closing: {}",
                String::from_utf8_lossy(&reply)
            )),
        },
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    } else {
        s.to_string()
    }
}

// ---- gRPC -----------------------------------------------------------------------------------

/// One gRPC call; `token` `None` sends no credentials.
enum Call {
    Oru(SubmitOruRequest),
    Dr(SubmitDiagnosticReportRequest),
    Report(SubmitReportRequest),
    Preview(PreviewMappingRequest),
    List(ListPendingOrdersRequest),
    Stream(StreamPendingOrdersRequest),
    Get(GetOrderRequest),
    Attachment(GetAttachmentContentRequest),
    OutboxList(ListOutboxRequest),
    OutboxGet(GetOutboxEntryRequest),
    OutboxRetry(RetryOutboxRequest),
    OutboxPurge(PurgeOutboxRequest),
}

enum GrpcExpect {
    /// A status with this code whose message contains the fragment.
    Status(Code, &'static str),
    /// SubmitOru answered with an ACK: code, MSA and ERR as in [`MllpExpect::Ack`].
    Ack {
        code: &'static str,
        msa: &'static str,
        err: &'static str,
    },
    /// PreviewMapping answered with an error of this code containing the fragment.
    PreviewError(&'static str, &'static str),
}

struct GrpcCase {
    name: &'static str,
    token: Option<&'static str>,
    call: Call,
    expect: GrpcExpect,
}

/// What a call gave back, reduced to what the rows check.
enum Outcome {
    Status(tonic::Status),
    Ack(qubs_bridge::grpc::pb::SubmitOruResponse),
    Preview(qubs_bridge::grpc::pb::PreviewMappingResponse),
    Other(String),
}

fn req<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(t) => authed(message, t),
        None => tonic::Request::new(message),
    }
}

async fn run_grpc(channel: tonic::transport::Channel, case: GrpcCase) -> (GrpcCase, Outcome) {
    let t = case.token;
    let limit = 64 * 1024 * 1024;
    let results = ResultServiceClient::new(channel.clone())
        .max_encoding_message_size(limit)
        .max_decoding_message_size(limit);
    let orders = OrderServiceClient::new(channel.clone());
    let outbox = OutboxServiceClient::new(channel.clone());
    let preview = MappingServiceClient::new(channel)
        .max_encoding_message_size(limit)
        .max_decoding_message_size(limit);
    fn done<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Outcome {
        match r {
            Ok(ok) => Outcome::Other(format!("{:?}", ok.into_inner())),
            Err(s) => Outcome::Status(s),
        }
    }
    let outcome = match &case.call {
        Call::Oru(m) => match results.clone().submit_oru(req(m.clone(), t)).await {
            Ok(r) => Outcome::Ack(r.into_inner()),
            Err(s) => Outcome::Status(s),
        },
        Call::Dr(m) => done(
            results
                .clone()
                .submit_diagnostic_report(req(m.clone(), t))
                .await,
        ),
        Call::Report(m) => done(results.clone().submit_report(req(m.clone(), t)).await),
        Call::Preview(m) => match preview.clone().preview_mapping(req(m.clone(), t)).await {
            Ok(r) => Outcome::Preview(r.into_inner()),
            Err(s) => Outcome::Status(s),
        },
        Call::List(m) => done(orders.clone().list_pending_orders(req(m.clone(), t)).await),
        Call::Stream(m) => match orders
            .clone()
            .stream_pending_orders(req(m.clone(), t))
            .await
        {
            Ok(r) => {
                let mut stream = r.into_inner();
                match stream.message().await {
                    Ok(first) => Outcome::Other(format!("{first:?}")),
                    Err(s) => Outcome::Status(s),
                }
            }
            Err(s) => Outcome::Status(s),
        },
        Call::Get(m) => done(orders.clone().get_order(req(m.clone(), t)).await),
        Call::Attachment(m) => {
            match orders
                .clone()
                .get_attachment_content(req(m.clone(), t))
                .await
            {
                Ok(r) => match r.into_inner().message().await {
                    Ok(first) => Outcome::Other(format!("{first:?}")),
                    Err(s) => Outcome::Status(s),
                },
                Err(s) => Outcome::Status(s),
            }
        }
        Call::OutboxList(m) => done(outbox.clone().list_outbox(req(m.clone(), t)).await),
        Call::OutboxGet(m) => done(outbox.clone().get_outbox_entry(req(*m, t)).await),
        Call::OutboxRetry(m) => done(outbox.clone().retry_outbox(req(m.clone(), t)).await),
        Call::OutboxPurge(m) => done(outbox.clone().purge_outbox(req(m.clone(), t)).await),
    };
    (case, outcome)
}

fn check_grpc(case: &GrpcCase, outcome: &Outcome) -> Result<(), String> {
    let text = match outcome {
        Outcome::Status(s) => s.message().to_string(),
        Outcome::Ack(a) => format!("{} {:?}", String::from_utf8_lossy(&a.ack), a.error),
        Outcome::Preview(p) => format!("{:?}", p.errors),
        Outcome::Other(o) => o.clone(),
    };
    if phi_in(&text) {
        return Err(format!("PHI in the answer: {}", truncate(&text)));
    }
    match (&case.expect, outcome) {
        (GrpcExpect::Status(code, fragment), Outcome::Status(s)) => {
            if s.code() != *code || !s.message().contains(fragment) {
                return Err(format!(
                    "got {:?} `{}`; want {code:?} containing `{fragment}`",
                    s.code(),
                    truncate(s.message())
                ));
            }
            Ok(())
        }
        (GrpcExpect::Ack { code, msa, err }, Outcome::Ack(a)) => {
            let ack = String::from_utf8_lossy(&a.ack).to_string();
            let (got_msa, got_err) = (segment(&ack, "MSA|"), segment(&ack, "ERR|"));
            if a.ack_code != *code || !matches(&got_msa, msa) || !matches(&got_err, err) {
                return Err(format!(
                    "got {} \n  MSA {}\n  want {msa}\n  ERR {}\n  want {err}",
                    a.ack_code,
                    truncate(&got_msa),
                    truncate(&got_err)
                ));
            }
            Ok(())
        }
        (GrpcExpect::PreviewError(code, fragment), Outcome::Preview(p)) => {
            if !p
                .errors
                .iter()
                .any(|e| e.code == *code && e.message.contains(fragment))
            {
                return Err(format!(
                    "preview errors {:?}; want {code} containing `{fragment}`",
                    p.errors
                ));
            }
            Ok(())
        }
        (_, Outcome::Status(s)) => Err(format!(
            "unexpected status {:?} `{}`",
            s.code(),
            truncate(s.message())
        )),
        (_, other) => Err(format!(
            "unexpected answer: {}",
            truncate(&match other {
                Outcome::Ack(a) => format!("ACK {}", String::from_utf8_lossy(&a.ack)),
                Outcome::Preview(p) => format!("preview {p:?}"),
                Outcome::Other(o) => o.clone(),
                Outcome::Status(_) => unreachable!(),
            })
        )),
    }
}

fn oru_call(message: Vec<u8>, domain: &str) -> Call {
    Call::Oru(SubmitOruRequest {
        message,
        domain: domain.into(),
    })
}

fn dr(json: String) -> Call {
    Call::Dr(SubmitDiagnosticReportRequest {
        domain: "acme".into(),
        diagnostic_report_json: json,
        idempotency_key: String::new(),
    })
}

fn report() -> SubmitReportRequest {
    SubmitReportRequest {
        domain: "acme".into(),
        appointment_id: "A0012".into(),
        report_text: REPORT_TEXT.into(),
        report_status: "final".into(),
        interpreting_clinician_name: "Dr Ignatius Thistlewood".into(),
        ..Default::default()
    }
}

fn preview(mapping: &str, input: String) -> Call {
    Call::Preview(PreviewMappingRequest {
        mapping: mapping.into(),
        input,
        site_time_zone: String::new(),
        trace: false,
    })
}

fn get(id: &str) -> Call {
    Call::Get(GetOrderRequest {
        domain: "acme".into(),
        appointment_id: id.into(),
        formats: vec![],
    })
}

fn status(name: &'static str, call: Call, code: Code, fragment: &'static str) -> GrpcCase {
    GrpcCase {
        name,
        token: Some(GRPC_TOKEN),
        call,
        expect: GrpcExpect::Status(code, fragment),
    }
}

fn nested_arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn dr_json(appointment: &str, conclusion: &str) -> String {
    serde_json::json!({
        "resourceType": "DiagnosticReport",
        "id": format!("dr-{appointment}"),
        "status": "final",
        "code": {"text": "CT"},
        "subject": {"display": PATIENT_TEXT},
        "basedOn": [{"identifier": {"system": "urn:qubs:appointment", "value": appointment}}],
        "conclusion": conclusion,
    })
    .to_string()
}

fn grpc_cases() -> Vec<GrpcCase> {
    let ten_mb = oru_with(&msh("G10"), "A0001", "F", &"x".repeat(10 * 1024 * 1024));
    let over_limit = oru_with(
        &msh("G13"),
        "A0001",
        "F",
        &"x".repeat(MAX_GRPC + 1024 * 1024),
    );
    let oru_ack = |name, message, code, msa, err| GrpcCase {
        name,
        token: Some(GRPC_TOKEN),
        call: oru_call(message, "acme"),
        expect: GrpcExpect::Ack { code, msa, err },
    };
    vec![
        // SubmitOru: the same payload classes as over MLLP.
        status(
            "SubmitOru: empty message",
            oru_call(vec![], "acme"),
            Code::InvalidArgument,
            "message is empty",
        ),
        oru_ack(
            "SubmitOru: junk",
            b"\x00\x01junk\xff".to_vec(),
            "AR",
            "MSA|AR|",
            NO_MSH,
        ),
        oru_ack(
            "SubmitOru: MSH followed by a line break",
            b"MSH\rPID|1".to_vec(),
            "AR",
            "MSA|AR|",
            BAD_MSH2,
        ),
        oru_ack(
            "SubmitOru: ORM^O01",
            oru_with(
                &msh("GT1").replace("ORU^R01^ORU_R01", "ORM^O01"),
                "A0001",
                "F",
                "t",
            ),
            "AR",
            "MSA|AR|GT1",
            "ERR|||200^Unsupported message type^HL70357|E||||…",
        ),
        oru_ack(
            "SubmitOru: missing MSH-10",
            oru("", "A0001", "F"),
            "AR",
            "MSA|AR|",
            "ERR||MSH^1^10|101^Required field missing^HL70357|E||||…",
        ),
        oru_ack(
            "SubmitOru: framing bytes in MSH-10",
            oru_with(&msh("G\x0bX\x1c"), "A0001", "X", "t"),
            "AE",
            "MSA|AE|G\\X0B\\X\\X1C\\",
            "ERR||OBR^1^25|103^Table value not found^HL70357|E||||…",
        ),
        oru_ack(
            "SubmitOru: 10 MB message",
            ten_mb,
            "AE",
            "MSA|AE|G10",
            "ERR||OBX^1^5|207^Application internal error^HL70357|E||||…",
        ),
        status(
            "SubmitOru: over grpc.max_message_bytes",
            oru_call(over_limit, "acme"),
            Code::OutOfRange,
            "message length too large",
        ),
        status(
            "SubmitOru: another domain",
            oru_call(oru("GD", "A0001", "F"), "globex"),
            Code::PermissionDenied,
            "may not use domain `globex`",
        ),
        GrpcCase {
            name: "SubmitOru: no credentials",
            token: None,
            call: oru_call(oru("GN", "A0001", "F"), "acme"),
            expect: GrpcExpect::Status(Code::Unauthenticated, "missing credentials"),
        },
        GrpcCase {
            name: "SubmitOru: unknown token",
            token: Some("not-the-token"),
            call: oru_call(oru("GN", "A0001", "F"), "acme"),
            expect: GrpcExpect::Status(Code::Unauthenticated, "unknown bearer token"),
        },
        // SubmitDiagnosticReport.
        status(
            "SubmitDiagnosticReport: no domain",
            Call::Dr(SubmitDiagnosticReportRequest {
                domain: String::new(),
                diagnostic_report_json: dr_json("A0001", REPORT_TEXT),
                idempotency_key: String::new(),
            }),
            Code::InvalidArgument,
            "domain is required",
        ),
        status(
            "SubmitDiagnosticReport: empty",
            dr(String::new()),
            Code::InvalidArgument,
            "not JSON: eof error at line 1 column 0",
        ),
        status(
            "SubmitDiagnosticReport: not JSON",
            dr(format!("<html>{PATIENT_TEXT}</html>")),
            Code::InvalidArgument,
            "not JSON: syntax error at line 1 column 1",
        ),
        status(
            "SubmitDiagnosticReport: truncated JSON",
            dr(dr_json("A0001", REPORT_TEXT)[..60].to_string()),
            Code::InvalidArgument,
            "not JSON: eof error at line 1 column 60",
        ),
        status(
            "SubmitDiagnosticReport: a JSON array",
            dr(format!("[{}]", dr_json("A0001", REPORT_TEXT))),
            Code::InvalidArgument,
            "expected a FHIR DiagnosticReport object, found an array",
        ),
        status(
            "SubmitDiagnosticReport: resourceType Patient",
            dr(dr_json("A0001", REPORT_TEXT).replace("DiagnosticReport", "Patient")),
            Code::InvalidArgument,
            "resourceType is `Patient`; expected `DiagnosticReport`",
        ),
        status(
            "SubmitDiagnosticReport: no resourceType",
            dr(dr_json("A0001", REPORT_TEXT).replace("\"resourceType\":\"DiagnosticReport\",", "")),
            Code::InvalidArgument,
            "resourceType is missing; expected `DiagnosticReport`",
        ),
        status(
            "SubmitDiagnosticReport: 100k nested arrays",
            dr(nested_arrays(100_000)),
            Code::InvalidArgument,
            "not JSON: nested more than 128 levels deep at line 1 column 12",
        ),
        status(
            "SubmitDiagnosticReport: 100k nested objects",
            dr("{\"a\":".repeat(100_000) + &"}".repeat(100_000)),
            Code::InvalidArgument,
            "not JSON: nested more than 128 levels deep",
        ),
        status(
            "SubmitDiagnosticReport: 11 MB conclusion",
            dr(dr_json("A0001", &"x".repeat(11 * 1024 * 1024))),
            Code::InvalidArgument,
            "bytes",
        ),
        status(
            "SubmitDiagnosticReport: no status, no basedOn",
            dr(r#"{"resourceType":"DiagnosticReport","conclusion":"x"}"#.into()),
            Code::InvalidArgument,
            "(target `appointmentId`): required value is missing",
        ),
        status(
            "SubmitDiagnosticReport: unknown status",
            dr(dr_json("A0001", REPORT_TEXT).replace("\"final\"", "\"registered\"")),
            Code::InvalidArgument,
            "value not in code table `status`",
        ),
        status(
            "SubmitDiagnosticReport: invalid idempotency key",
            Call::Dr(SubmitDiagnosticReportRequest {
                domain: "acme".into(),
                diagnostic_report_json: dr_json("A0001", REPORT_TEXT),
                idempotency_key: "has spaces\nand a line break".into(),
            }),
            Code::InvalidArgument,
            "idempotency_key must be 1 to 128 printable ASCII characters",
        ),
        status(
            "SubmitDiagnosticReport: over grpc.max_message_bytes",
            dr(dr_json("A0001", &"x".repeat(MAX_GRPC + 1024 * 1024))),
            Code::OutOfRange,
            "message length too large",
        ),
        // SubmitReport.
        status(
            "SubmitReport: no appointment_id",
            Call::Report(SubmitReportRequest {
                appointment_id: " ".into(),
                ..report()
            }),
            Code::InvalidArgument,
            "appointment_id is required",
        ),
        status(
            "SubmitReport: no report_text",
            Call::Report(SubmitReportRequest {
                report_text: String::new(),
                ..report()
            }),
            Code::InvalidArgument,
            "report_text is required",
        ),
        status(
            "SubmitReport: report_text over 2 MiB",
            Call::Report(SubmitReportRequest {
                report_text: "x".repeat(2_097_153),
                ..report()
            }),
            Code::InvalidArgument,
            "report_text is 2097153 bytes; QUBS accepts at most 2097152",
        ),
        status(
            "SubmitReport: unknown report_status",
            Call::Report(SubmitReportRequest {
                report_status: "done".into(),
                ..report()
            }),
            Code::InvalidArgument,
            "report_status must be `preliminary` or `final`",
        ),
        status(
            "SubmitReport: reported_at_utc not RFC 3339",
            Call::Report(SubmitReportRequest {
                reported_at_utc: "yesterday".into(),
                ..report()
            }),
            Code::InvalidArgument,
            "reported_at_utc must be an RFC 3339 UTC timestamp",
        ),
        status(
            "SubmitReport: unknown appointment",
            Call::Report(SubmitReportRequest {
                appointment_id: "A404".into(),
                ..report()
            }),
            Code::NotFound,
            "appointment A404 is unknown to QUBS or not pending reporting",
        ),
        status(
            "SubmitReport: idempotency key too long",
            Call::Report(SubmitReportRequest {
                idempotency_key: "k".repeat(129),
                ..report()
            }),
            Code::InvalidArgument,
            "idempotency_key must be 1 to 128 printable ASCII characters",
        ),
        status(
            "SubmitReport: no domain",
            Call::Report(SubmitReportRequest {
                domain: String::new(),
                ..report()
            }),
            Code::InvalidArgument,
            "domain is required",
        ),
        // PreviewMapping.
        status(
            "PreviewMapping: unknown mapping",
            preview("no_such_mapping", "{}".into()),
            Code::NotFound,
            "no mapping `no_such_mapping`; the set has: ",
        ),
        status(
            "PreviewMapping: empty mapping name",
            preview("", "{}".into()),
            Code::NotFound,
            "no mapping ``",
        ),
        GrpcCase {
            name: "PreviewMapping: order input not JSON",
            token: Some(GRPC_TOKEN),
            call: preview("service_request", format!("{PATIENT_TEXT} <xml/>")),
            expect: GrpcExpect::PreviewError(
                "unparseable",
                "input is not JSON: syntax error at line 1 column 1",
            ),
        },
        GrpcCase {
            name: "PreviewMapping: 100k nested arrays",
            token: Some(GRPC_TOKEN),
            call: preview("service_request", nested_arrays(100_000)),
            expect: GrpcExpect::PreviewError(
                "unparseable",
                "input is not JSON: nested more than 128 levels deep",
            ),
        },
        GrpcCase {
            name: "PreviewMapping: ORU mapping given junk",
            token: Some(GRPC_TOKEN),
            call: preview("oru_to_report", format!("junk {PATIENT_TEXT}")),
            expect: GrpcExpect::PreviewError("mapping", "HL7 input: no MSH segment"),
        },
        GrpcCase {
            name: "PreviewMapping: ORU mapping given MSH and a line break",
            token: Some(GRPC_TOKEN),
            call: preview("oru_to_report", "MSH\rPID|1".into()),
            expect: GrpcExpect::PreviewError(
                "mapping",
                "HL7 input: MSH-2 encoding characters invalid",
            ),
        },
        GrpcCase {
            name: "PreviewMapping: DiagnosticReport mapping given a string",
            token: Some(GRPC_TOKEN),
            call: preview("diagnostic_report_to_report", "\"just a string\"".into()),
            expect: GrpcExpect::PreviewError("mapping", "required value is missing"),
        },
        GrpcCase {
            name: "PreviewMapping: unknown site time zone",
            token: Some(GRPC_TOKEN),
            call: Call::Preview(PreviewMappingRequest {
                mapping: "oru_to_report".into(),
                input: String::from_utf8(oru("PV1", "A0001", "F")).unwrap(),
                site_time_zone: "Mars/Olympus_Mons".into(),
                trace: false,
            }),
            expect: GrpcExpect::PreviewError(
                "mapping",
                "site.timeZone: not a known IANA time zone",
            ),
        },
        // OrderService.
        status(
            "ListPendingOrders: page_size 501",
            Call::List(ListPendingOrdersRequest {
                domain: "acme".into(),
                page_size: 501,
                ..Default::default()
            }),
            Code::InvalidArgument,
            "page_size must be 1–500 (or 0 for the default), not 501",
        ),
        status(
            "ListPendingOrders: unknown format",
            Call::List(ListPendingOrdersRequest {
                domain: "acme".into(),
                formats: vec![99],
                ..Default::default()
            }),
            Code::InvalidArgument,
            "unknown output format 99",
        ),
        status(
            "ListPendingOrders: no domain",
            Call::List(ListPendingOrdersRequest::default()),
            Code::InvalidArgument,
            "domain is required",
        ),
        status(
            "ListPendingOrders: another domain",
            Call::List(ListPendingOrdersRequest {
                domain: "globex".into(),
                ..Default::default()
            }),
            Code::PermissionDenied,
            "may not use domain `globex`",
        ),
        status(
            "ListPendingOrders: path in the domain",
            Call::List(ListPendingOrdersRequest {
                domain: "acme/../globex".into(),
                ..Default::default()
            }),
            Code::PermissionDenied,
            "may not use domain `acme/../globex`",
        ),
        status(
            "ListPendingOrders: forged page token",
            Call::List(ListPendingOrdersRequest {
                domain: "acme".into(),
                page_token: "not-a-token%00\n".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "QUBS GET pending appointments failed: 400",
        ),
        status(
            "StreamPendingOrders: page_size 100000",
            Call::Stream(StreamPendingOrdersRequest {
                domain: "acme".into(),
                page_size: 100_000,
                ..Default::default()
            }),
            Code::InvalidArgument,
            "page_size must be 1–500",
        ),
        status(
            "GetOrder: no id",
            get(""),
            Code::InvalidArgument,
            "appointment_id is required",
        ),
        // GetOrder looks its appointment up in the pending list as last read (QUBS
        // documents no single-appointment GET).
        status(
            "GetOrder: unknown id",
            get("A404"),
            Code::NotFound,
            "appointment A404 is not in QUBS's pending reporting list",
        ),
        status(
            "GetOrder: path traversal in the id",
            get("../../acme/reporting/appointments/pending"),
            Code::NotFound,
            "is not in QUBS's pending reporting list",
        ),
        status(
            "GetOrder: control characters in the id",
            get("A0001\r\nX-Injected: 1\0"),
            Code::NotFound,
            "is not in QUBS's pending reporting list",
        ),
        status(
            "GetOrder: 100k character id",
            get(&"A".repeat(100_000)),
            Code::InvalidArgument,
            "appointment_id is 100000 characters long; at most 256 are taken",
        ),
        status(
            "GetOrder: another domain",
            Call::Get(GetOrderRequest {
                domain: "globex".into(),
                appointment_id: "A0001".into(),
                formats: vec![],
            }),
            Code::PermissionDenied,
            "may not use domain `globex`",
        ),
        status(
            "GetAttachmentContent: no guid",
            Call::Attachment(GetAttachmentContentRequest {
                domain: "acme".into(),
                appointment_id: "A0001".into(),
                attachment_guid: String::new(),
            }),
            Code::InvalidArgument,
            "appointment_id and attachment_guid are required",
        ),
        status(
            "GetAttachmentContent: unknown guid",
            Call::Attachment(GetAttachmentContentRequest {
                domain: "acme".into(),
                appointment_id: "A0001".into(),
                attachment_guid: "../../x".into(),
            }),
            Code::NotFound,
            "404",
        ),
        // OutboxService.
        status(
            "GetOutboxEntry: id -1",
            Call::OutboxGet(GetOutboxEntryRequest { id: -1 }),
            Code::NotFound,
            "no outbox entry -1",
        ),
        status(
            "ListOutbox: unknown state",
            Call::OutboxList(ListOutboxRequest {
                state: "bogus".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "state `bogus` is not one of pending, submitted, dead",
        ),
        status(
            "RetryOutbox: neither ids nor all_dead",
            Call::OutboxRetry(RetryOutboxRequest::default()),
            Code::InvalidArgument,
            "give entry ids, or all_dead",
        ),
        status(
            "PurgeOutbox: pending",
            Call::OutboxPurge(PurgeOutboxRequest {
                state: "pending".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "pending entries are never purged",
        ),
        status(
            "PurgeOutbox: another domain",
            Call::OutboxPurge(PurgeOutboxRequest {
                state: "dead".into(),
                domain: "globex".into(),
                ..Default::default()
            }),
            Code::PermissionDenied,
            "may not use domain `globex`",
        ),
    ]
}

// ---- mapping files --------------------------------------------------------------------------

struct MappingCase {
    name: &'static str,
    /// The file's bytes (written to disk when not UTF-8).
    text: Vec<u8>,
    /// Expected `line:column` and a fragment of the diagnostic.
    at: &'static str,
    fragment: &'static str,
}

const GOOD_HEAD: &str = "mapping: bad\ninput: oru\noutput: report\nrules:\n";

fn mapping_cases() -> Vec<MappingCase> {
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let deep_block: String = (0..200)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
        .collect();
    let mut huge = String::from(GOOD_HEAD);
    for i in 0..300_000 {
        huge.push_str(&format!("  - {{target: reportText, value: v{i}}}\n"));
    }
    let case = |name, text: String, at, fragment| MappingCase {
        name,
        text: text.into_bytes(),
        at,
        fragment,
    };
    vec![
        case(
            "billion laughs",
            laughs,
            "6:15",
            "more than 250000 YAML nodes",
        ),
        case(
            "10k nested flow sequences",
            nested_arrays(10_000),
            "1:256",
            "nested too deeply",
        ),
        case(
            "200 nested block mappings",
            deep_block,
            "25:",
            "nested more than 24 levels deep",
        ),
        MappingCase {
            name: "not UTF-8",
            text: cat(&[
                GOOD_HEAD.as_bytes(),
                b"  - target: reportText\n    value: caf\xe9\n",
            ]),
            at: "6:15",
            fragment: "not valid UTF-8",
        },
        case(
            "tab indentation",
            format!("{GOOD_HEAD}  - target: reportText\n\tvalue: x\n"),
            "5:13",
            "a tab where YAML allows none",
        ),
        case(
            "duplicate key",
            "mapping: bad\nmapping: again\ninput: oru\noutput: report\nrules: []\n".into(),
            "2:",
            "appears twice",
        ),
        case(
            "unknown key",
            format!("{GOOD_HEAD}  - target: reportText\n    valeu: x\n"),
            "6:5",
            "unknown key `valeu`",
        ),
        case(
            "NUL byte",
            format!("{GOOD_HEAD}  - target: reportText\n    value: \0\n"),
            "6:",
            "",
        ),
        case("empty file", String::new(), "1:1", ""),
        case("a list at the top", "- 1\n- 2\n".into(), "1:1", "mapping"),
        case(
            "300k rules (huge file)",
            huge,
            "",
            "more than 250000 YAML nodes",
        ),
    ]
}

fn run_mapping(case: &MappingCase) -> Result<(), String> {
    // Files go through `check_dir`, the way `qubs-bridge mappings check` reads them.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, &case.text).map_err(|e| e.to_string())?;
    let diags = MappingSet::check_dir(dir.path());
    let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let prefix = format!("{}:{}", path.display(), case.at);
    if shown
        .iter()
        .any(|d| d.starts_with(&prefix) && d.to_lowercase().contains(&case.fragment.to_lowercase()))
    {
        Ok(())
    } else {
        Err(format!(
            "no diagnostic at {} containing `{}` in:\n    {}",
            case.at,
            case.fragment,
            shown
                .iter()
                .map(|s| truncate(s))
                .collect::<Vec<_>>()
                .join("\n    ")
        ))
    }
}

// ---- QUBS responses -------------------------------------------------------------------------

/// A fake QUBS on loopback: a token endpoint, and appointments whose bodies are broken in
/// the way their id says.
async fn fake_qubs() -> String {
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};

    async fn token() -> impl IntoResponse {
        axum::Json(serde_json::json!({
            "access_token": "fake-token", "token_type": "Bearer", "expires_in": 3600
        }))
    }
    async fn appointment(Path((_domain, id)): Path<(String, String)>) -> Response {
        let json =
            |body: String| ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        let phi = format!("\"patientName\":\"{PATIENT_TEXT}\"");
        match id.as_str() {
            "deep" => json(format!("{{{phi},\"x\":{}}}", nested_arrays(100_000))),
            "array" => json(format!("[{{\"appointmentId\":\"array\",{phi}}}]")),
            "wrong-types" => json(format!("{{\"appointmentId\":{{\"id\":42}},{phi}}}")),
            "no-id" => json(format!("{{{phi}}}")),
            "empty" => json(String::new()),
            "html" => (
                [(header::CONTENT_TYPE, "text/html")],
                format!("<html><body>{PATIENT_TEXT}</body></html>"),
            )
                .into_response(),
            "truncated" => {
                let parts: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                    Ok(bytes::Bytes::from(format!(
                        "{{{phi},\"appointmentId\":\"trunc"
                    ))),
                    Err(std::io::Error::other("cut")),
                ];
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from_stream(futures::stream::iter(parts)),
                )
                    .into_response()
            }
            "huge" => {
                // 70 MB of one JSON string, streamed without a length.
                let chunk = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
                let head =
                    bytes::Bytes::from(format!("{{{phi},\"appointmentId\":\"huge\",\"x\":\""));
                let body = futures::stream::iter(
                    std::iter::once(head)
                        .chain(std::iter::repeat_n(chunk, 70))
                        .map(Ok::<_, std::io::Error>),
                );
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from_stream(body),
                )
                    .into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/oauth2/token", post(token))
        .route("/v1/{domain}/reporting/appointments/{id}", get(appointment));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

struct QubsCase {
    name: &'static str,
    id: &'static str,
    /// Fragment of the client error's text.
    fragment: &'static str,
}

fn qubs_cases() -> Vec<QubsCase> {
    let case = |name, id, fragment| QubsCase { name, id, fragment };
    vec![
        case(
            "100k nested arrays",
            "deep",
            "QUBS GET appointment failed: unexpected response body: malformed JSON (nested more than 128 levels deep at line 1 column",
        ),
        case(
            "an array instead of an object",
            "array",
            "QUBS GET appointment failed: unexpected response body: expected a JSON object, found an array",
        ),
        case(
            "appointmentId of the wrong type",
            "wrong-types",
            "QUBS GET appointment failed: unexpected response body: appointmentId",
        ),
        case(
            "no appointmentId",
            "no-id",
            "QUBS GET appointment failed: unexpected response body: appointmentId is missing",
        ),
        case(
            "empty body",
            "empty",
            "QUBS GET appointment failed: unexpected response body: malformed JSON (eof error at line 1 column 0)",
        ),
        case(
            "HTML from QUBS",
            "html",
            "QUBS GET appointment failed: unexpected response body: the response is text/html, not JSON",
        ),
        case(
            "body cut short",
            "truncated",
            "QUBS GET appointment failed after 2 attempts",
        ),
        case(
            "70 MB body",
            "huge",
            "QUBS GET appointment failed: unexpected response body: response body is over 67108864 bytes",
        ),
    ]
}

fn fake_qubs_env(base: &str) -> Vec<(String, String)> {
    vec![
        ("QUBS_BRIDGE__QUBS__BASE_URL".into(), format!("{base}/v1")),
        (
            "QUBS_BRIDGE__QUBS__TOKEN_URL".into(),
            format!("{base}/oauth2/token"),
        ),
        (
            "QUBS_BRIDGE__QUBS__CLIENT_SECRET".into(),
            "fake-secret".into(),
        ),
        ("QUBS_BRIDGE__QUBS__RETRY__MAX_ATTEMPTS".into(), "2".into()),
        (
            "QUBS_BRIDGE__QUBS__RETRY__INITIAL_BACKOFF_MS".into(),
            "10".into(),
        ),
        (
            "QUBS_BRIDGE__QUBS__RETRY__MAX_BACKOFF_MS".into(),
            "20".into(),
        ),
    ]
}

async fn run_qubs(client: &qubs_bridge::qubs::Client, case: &QubsCase) -> Result<(), String> {
    let e = match client.appointment("acme", case.id).await {
        Ok(a) => return Err(format!("read an appointment: {}", a.id())),
        Err(e) => e,
    };
    let text = e.to_string();
    if phi_in(&text) {
        return Err(format!("PHI in the error: {}", truncate(&text)));
    }
    if !text.contains(case.fragment) {
        return Err(format!(
            "got `{}`; want `{}`",
            truncate(&text),
            case.fragment
        ));
    }
    // Support follows a failure by the correlation id sent with the request.
    if e.correlation_id.is_nil() || !text.contains(&e.correlation_id.to_string()) {
        return Err(format!("no correlation id in `{}`", truncate(&text)));
    }
    Ok(())
}

// ---- the test -------------------------------------------------------------------------------

type Failures = Vec<String>;

fn record(failures: &mut Failures, table: &str, name: &str, result: Result<(), String>) {
    // What one row freed goes back to the system before the next: glibc keeps freed memory
    // in per-thread arenas, so rows handled on different threads would otherwise add up in
    // the peak even though their inputs were never held at the same time.
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    eprintln!(
        "[{table}] {name}: {} (peak RSS {} MB)",
        if result.is_ok() { "ok" } else { "FAILED" },
        vm_hwm() / (1024 * 1024)
    );
    if let Err(why) = result {
        failures.push(format!("[{table}] {name}: {why}"));
    }
}

fn boxed<'a, T>(
    f: impl Future<Output = T> + Send + 'a,
) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_answers_bad_input_clearly() {
    // The panic count and the peak memory are the whole process's: no other test may run.
    let _turn = common::logs::exclusive("off");
    count_panics();
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for i in 1..=20 {
        sim.put_appointment("acme", pending(&format!("A{i:04}")));
    }
    let bridge = start_bridge(
        sim,
        &[
            ("QUBS_BRIDGE__MLLP__MAX_FRAME_BYTES", &MAX_FRAME.to_string()),
            ("QUBS_BRIDGE__MLLP__FRAME_TIMEOUT_SECS", "2"),
            (
                "QUBS_BRIDGE__GRPC__MAX_MESSAGE_BYTES",
                &MAX_GRPC.to_string(),
            ),
        ],
    )
    .await;
    let mut failures = Failures::new();
    let mut rows = 0;

    // A valid result, accepted before anything else.
    let addr = bridge.service.mllp_addr.unwrap();
    let mut client = qubs_bridge::mllp::MllpClient::connect(addr, None, Duration::from_secs(5))
        .await
        .unwrap();
    let first = client
        .call(&oru("GOOD1", "A0020", "F"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        segment(&String::from_utf8_lossy(&first), "MSA|"),
        "MSA|AA|GOOD1"
    );
    // The tables hold the test's own copies of the big inputs (some 80 MB): made first, so
    // that the peak measured from here on is what handling them costs.
    let tables = (mllp_cases(), grpc_cases(), mapping_cases(), qubs_cases());
    // An earlier test of this binary may have left a higher peak: start the peak over from
    // what is resident now (Linux: 5 to clear_refs resets VmHWM).
    std::fs::write("/proc/self/clear_refs", "5").expect("the peak RSS can be reset");
    let peak_before = vm_hwm();

    for case in tables.0 {
        rows += 1;
        let result = run_mllp(&bridge, &case).await;
        record(&mut failures, "MLLP", case.name, result);
    }

    let channel = tonic::transport::Endpoint::from_shared(bridge.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    for case in tables.1 {
        rows += 1;
        let (case, outcome) = boxed(tokio::time::timeout(
            Duration::from_secs(30),
            run_grpc(channel.clone(), case),
        ))
        .await
        .expect("a gRPC row answers within 30 s");
        record(
            &mut failures,
            "gRPC",
            case.name,
            check_grpc(&case, &outcome),
        );
    }

    for case in tables.2 {
        rows += 1;
        let result = tokio::task::spawn_blocking(move || (case.name, run_mapping(&case)))
            .await
            .unwrap();
        record(&mut failures, "mapping file", result.0, result.1);
    }

    let fake = fake_qubs().await;
    let env = fake_qubs_env(&fake);
    let settings = qubs_bridge::config::Settings::load_with_env(None, env)
        .expect("fake QUBS settings")
        .qubs;
    let qubs = qubs_bridge::qubs::Client::new(&settings).unwrap();
    for case in tables.3 {
        rows += 1;
        let result = run_qubs(&qubs, &case).await;
        record(&mut failures, "QUBS response", case.name, result);
    }

    // Nothing already accepted was lost: GOOD1 reached QUBS exactly once...
    let good: Vec<_> = bridge
        .sim
        .submissions("acme")
        .into_iter()
        .filter(|s| s.appointment_id == "A0020")
        .collect();
    assert_eq!(good.len(), 1, "the accepted result was submitted once");
    let posts = bridge
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/A0020/report"))
        .count();
    assert_eq!(posts, 1, "one POST for the accepted result");
    // ...and the service still takes new results, over MLLP and gRPC.
    let after = client
        .call(&oru("GOOD2", "A0019", "F"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        segment(&String::from_utf8_lossy(&after), "MSA|"),
        "MSA|AA|GOOD2"
    );
    let answer = ResultServiceClient::new(channel)
        .submit_oru(authed(
            SubmitOruRequest {
                message: oru("GOOD3", "A0018", "F"),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.ack_code, "AA");

    let growth = vm_hwm().saturating_sub(peak_before);
    eprintln!(
        "{rows} bad-input rows; peak RSS grew by {} MB",
        growth / (1024 * 1024)
    );
    assert!(rows >= 60, "at least 60 rows, not {rows}");
    assert!(
        failures.is_empty(),
        "{} of {rows} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    assert!(
        growth < 200 * 1024 * 1024,
        "peak RSS grew by {} MB",
        growth / (1024 * 1024)
    );
}
