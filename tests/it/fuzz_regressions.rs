//! Inputs the fuzz targets (fuzz/, see fuzz/run.sh) found crashing or breaking an invariant,
//! replayed under `cargo test` through the targets' own checks (fuzz/checks.rs), after the
//! fix.
//!
//! Byte inputs live in tests/data/fuzz/<target>/ (one file each, named after the bug);
//! structured inputs (mllp_codec, ack_builder) are written out below as plain Rust.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qubs_bridge::hl7::ack::{self, AckCode, AckError, ErrorCode, IncomingHeader};
use qubs_bridge::hl7::er7::Message;
use qubs_bridge::hl7::escape::unescape;
use qubs_bridge::mapping::MappingSet;

/// The fuzz targets' own checks (fuzz/checks.rs).
#[path = "../../fuzz/checks.rs"]
mod checks;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn now() -> jiff::ZonedDateTime {
    "2026-11-27T10:00:00+11:00[Australia/Sydney]"
        .parse()
        .unwrap()
}

#[test]
fn oru_to_report_inputs() {
    let set = MappingSet::load_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")).unwrap();
    for (path, data) in inputs("oru_to_report") {
        let run = std::panic::catch_unwind(|| checks::oru_to_report(&set, &data, 256, &now()));
        assert!(run.is_ok(), "{}", path.display());
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn mapping_loader_inputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    for (path, data) in inputs("mapping_loader") {
        let text = String::from_utf8_lossy(&data).into_owned();
        let started = thread_cpu_time();
        let result = MappingSet::from_texts(&[(dir.join("fuzz.yaml"), text)]);
        if let Err(e) = result {
            assert!(!e.0.is_empty(), "{}", path.display());
        }
        // CPU time, not wall time: on a busy machine the thread may wait for a core.
        let spent = thread_cpu_time() - started;
        assert!(
            spent < Duration::from_secs(5),
            "{} took {spent:?} of CPU",
            path.display(),
        );
    }
}

/// What fuzz/fuzz_targets/ack_builder.rs checks, for one hand-made header.
fn check_ack(header: &IncomingHeader, code: AckCode, error: Option<&AckError>) {
    checks::ack(header, code, error, &now());
}

/// Raw header fields set by hand with a line break or the field separator used to be
/// copied verbatim, splitting MSH or starting a new segment; so were location segment ids.
#[test]
fn ack_builder_hostile_raw_fields() {
    let mut h = IncomingHeader::recover("MSH|^~\\&|A|B|C|D|x||ORU^R01|ID1|P|2.3\r");
    h.sending_application = "RIS\rERR|injected".into();
    h.receiving_facility = "a|b\nc".into();
    h.trigger_event = "R01|x".into();
    h.version = "2.3\r".into();
    h.control_id = Some("ID|1^\\E\\\r\n€".into());
    check_ack(&h, AckCode::AA, None);
    let e = AckError {
        code: ErrorCode::DataTypeError,
        location: Some(qubs_bridge::hl7::ack::ErrorLocation {
            segment: "OB|X\r".into(),
            sequence: 1,
            field: 5,
        }),
        text: "text | with ^ all & the ~ delimiters \\ and\r\nbreaks".into(),
    };
    check_ack(&h, AckCode::CE, Some(&e));
    h.version = "2.5.1".into();
    check_ack(&h, AckCode::AE, Some(&e));
}

/// ack_builder crash: MSH-7 carries the UTC offset, whose sign was written bare; with `+`
/// (or `-`) as a delimiter it split MSH-7 and shifted every field after it.
#[test]
fn ack_builder_offset_sign_as_delimiter() {
    for msh in [
        "MSH+[:`\\+A+B+C+D+x++ORU[R01+ID1+P+2.5.1\r",
        "MSH-^~\\&-A-B-C-D-x--ORU^R01-ID1-P-2.3\r",
        "MSH|-~\\&|A|B|C|D|x||ORU-R01|ID1|P|2.5.1\r",
    ] {
        let h = IncomingHeader::recover(msh);
        assert_eq!(h.control_id.as_deref(), Some("ID1"), "{msh:?}");
        for now in [
            "2026-11-27T10:00:00+11:00[Australia/Sydney]",
            "2026-11-27T10:00:00-05:00[America/New_York]",
        ] {
            let now: jiff::ZonedDateTime = now.parse().unwrap();
            let text = ack::build(&h, AckCode::AA, None, &now);
            let msg = Message::parse(&text).unwrap();
            assert_eq!(msg.query("MSH-9.1").unwrap(), Some("ACK"), "{text:?}");
            assert_eq!(msg.query("MSA-2").unwrap(), Some("ID1"), "{text:?}");
            let msh7 = msg.query("MSH-7").unwrap().unwrap();
            assert_eq!(
                unescape(msh7, &h.delimiters),
                now.strftime("%Y%m%d%H%M%S%z").to_string()
            );
            check_ack(&h, AckCode::AA, None);
        }
    }
}
