//! The ER7 reader on every real-world sample in tests/data/hl7 (see tests/data/SOURCES.md).

use qubs_bridge::hl7::er7::{Message, ReadOptions, ReadWarning, WrappedLines};
use qubs_bridge::hl7::escape::unescape;

fn sample(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/hl7/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn all_samples() -> Vec<(String, String)> {
    let dir = format!("{}/tests/data/hl7", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name.clone(), sample(&name))
        })
        .collect();
    v.sort();
    v
}

/// Every sample reads, covers its whole input (nothing silently dropped), and its
/// segment count equals the number of non-empty lines minus rejoined wrapped lines.
#[test]
fn every_sample_reads_completely() {
    let samples = all_samples();
    assert_eq!(samples.len(), 20);
    for (name, text) in &samples {
        let m = Message::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        assert_eq!(
            m.covered_len(),
            body.trim_end_matches(['\r', '\n']).len(),
            "{name}: not all input covered"
        );
        let lines = body.split(['\r', '\n']).filter(|l| !l.is_empty()).count();
        let rejoined = m
            .warnings()
            .iter()
            .filter(|w| matches!(w, ReadWarning::WrappedLineRejoined { .. }))
            .count();
        assert_eq!(m.len(), lines - rejoined, "{name}");
        assert!(m.control_id().is_some(), "{name}: MSH-10");
        assert_eq!(m.segment(0).unwrap().id(), "MSH");
    }
}

#[test]
fn wrapped_lines_are_rejoined_or_rejected() {
    // CR inside base64 in OBX-5: the PDF comes back whole and OBX-11 is `F`.
    let pdf = sample("dcm4che-oru-r01-pdf.hl7");
    let m = Message::parse(&pdf).unwrap();
    assert_eq!(
        m.warnings(),
        [ReadWarning::WrappedLineRejoined {
            line: 10,
            segment: "OBX".into()
        }]
    );
    let data = m.query("OBX[4]-5.5").unwrap().unwrap();
    assert!(data.starts_with("JVBERi0x") && data.ends_with("A0KJSVFT0YNCg=="));
    assert_eq!(m.query("OBX[4]-11").unwrap(), Some("F"));
    let err = Message::parse_with(
        &pdf,
        ReadOptions {
            wrapped_lines: WrappedLines::Reject,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 10") && err.contains("OBX"), "{err}");

    // LF inside OBR-17 (a phone number).
    let ankle = sample("nodehl7-orm-o01-xray-ankle.hl7");
    let m = Message::parse(&ankle).unwrap();
    assert!(matches!(
        m.warnings(),
        [ReadWarning::WrappedLineRejoined { segment, .. }] if segment == "OBR"
    ));
    assert_eq!(m.query("OBR-25").unwrap(), Some("Final"));
}

#[test]
fn sample_queries() {
    let t1 = sample("dcm4che-oru-r01-sr-findings.hl7");
    let m = Message::parse(&t1).unwrap();
    assert_eq!(m.query("OBR-32.1.2").unwrap(), Some("VerifyingObserverFN"));
    assert_eq!(m.query("OBR-18").unwrap(), Some("AccessionNumber"));
    // One `|` too many in OBX 8: its status sits in OBX-12.
    assert_eq!(m.query("OBX[8]-11").unwrap(), Some(""));
    assert_eq!(m.query("OBX[8]-12").unwrap(), Some("F"));

    let t2 = sample("mirth-oru-r01-lab-multi-obr.hl7");
    let m = Message::parse(&t2).unwrap();
    assert_eq!(m.order_groups().len(), 12);
    assert_eq!(m.query("MSH-7").unwrap(), Some("20100604234724.085-0400"));

    let t3 = sample("msfhirconv-oru-r01-lab-two-obr-final.hl7");
    let m = Message::parse(&t3).unwrap();
    let groups = m.order_groups();
    assert_eq!(groups.len(), 2);
    let obx5 = qubs_bridge::hl7::er7::Path::parse("OBX[*]-5").unwrap();
    let total: usize = groups
        .iter()
        .map(|g| m.group_scope(g).all(&obx5).len())
        .sum();
    assert_eq!(total, m.whole().all(&obx5).len());
}

#[test]
fn sample_escapes_unescape() {
    let t4 = sample("hl7dotnetcore-orm-o01-escapes.hl7");
    let m = Message::parse(&t4).unwrap();
    let d = m.delimiters();
    let nte = qubs_bridge::hl7::er7::Path::parse("NTE[*]-3").unwrap();
    let v: Vec<String> = m
        .whole()
        .all(&nte)
        .into_iter()
        .map(|r| unescape(r, &d).into_owned())
        .collect();
    assert_eq!(
        v,
        [
            "some text\nsome text after new line\nissue Efferent-Health#82",
            "some text\r\nsome text after new line\r\nissue Efferent-Health#81"
        ]
    );
    let t5 = sample("dcm4che-siu-s12-appointment.hl7");
    let m = Message::parse(&t5).unwrap();
    let ais3 = m.query("AIS-3").unwrap().unwrap();
    assert!(unescape(ais3, &m.delimiters()).contains("OPERAÇÃO"));
    let t6 = sample("hl7parser-oru-r01-lab-escapes.hl7");
    let m = Message::parse(&t6).unwrap();
    let obr4 = m.query("OBR-4.5").unwrap().unwrap();
    assert_eq!(unescape(obr4, &m.delimiters()), "CBC & Auto Differential");
    let units = m.query("OBX[1]-6").unwrap().unwrap();
    assert_eq!(unescape(units, &m.delimiters()), "10^9/L");
}

/// Mutated samples (bytes dropped, delimiters and line breaks inserted) never panic the
/// reader or its queries.
#[test]
fn reader_never_panics_on_mangled_input() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let paths: Vec<_> = [
        "MSH-1",
        "MSH-2",
        "MSH-10",
        "OBR-32.1.2",
        "OBX[*]-5",
        "PID-3[2].1",
        "OBX[3]-5.1.1",
    ]
    .iter()
    .map(|p| qubs_bridge::hl7::er7::Path::parse(p).unwrap())
    .collect();
    let inserts = [
        "\r", "\n", "|", "^", "~", "\\", "&", "MSH", "\r\r", "é", "\\X", "\\XC3\\",
    ];
    for (_, text) in all_samples() {
        for _ in 0..40 {
            let mut t = text.clone();
            for _ in 0..(next() % 6 + 1) {
                let mut at = (next() as usize) % (t.len() + 1);
                while !t.is_char_boundary(at) {
                    at -= 1;
                }
                if next() % 2 == 0 {
                    let mut end = (at + (next() % 8) as usize).min(t.len());
                    while !t.is_char_boundary(end) {
                        end -= 1;
                    }
                    t.replace_range(at..end, "");
                } else {
                    t.insert_str(at, inserts[(next() % inserts.len() as u64) as usize]);
                }
            }
            if let Ok(m) = Message::parse(&t) {
                for p in &paths {
                    for v in m.whole().all(p) {
                        let _ = unescape(v, &m.delimiters());
                    }
                }
                for g in m.order_groups() {
                    let _ = m.group_scope(&g).all(&paths[4]);
                }
                let _ = m.control_id();
            }
        }
    }
}
