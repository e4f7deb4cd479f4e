//! The qubs-bridge side of the side-by-side benchmark against peer libraries
//! (`benches/peers/run.sh` runs it together with the Python and JavaScript peers).
//!
//! `cargo bench --bench peers -- --corpus DIR --out DIR [--runs 5] [--check 50]`
//!
//! Reads the corpus made by `gen_corpus.py` into memory, then times each job over the whole
//! corpus, best of `--runs`, and prints one JSON line per job. The outputs for the first
//! `--check` items go to `OUT/qubs-bridge/` for `compare.py`, which compares every
//! implementation's results.
//!
//! Jobs (the same work the peers do):
//! - `oru`: read an ORU^R01 with the hot-path reader and extract accession (OBR-18), result
//!   status (OBR-25), interpreter (OBR-32.1, as "Prefix Given Middle Family Suffix") and the
//!   report text (TX observations, unescaped, one line each).
//! - `report`: the whole inbound mapping (`MappingSet::map_oru` with
//!   `mappings/oru_to_report.yaml`), what the service runs per received ORU^R01.
//! - `orm`: order document → ORM^O01 ER7 with `mappings/orm_o01.yaml`, with the default
//!   output check, as in the service (and, for reference, with the full check).
//! - `sr`: order document → FHIR R4 ServiceRequest JSON with `mappings/service_request.yaml`,
//!   with the default output check (and with fhir-sdk's typed parse, for reference).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use qubs_bridge::hl7::er7::{self, Message};
use qubs_bridge::hl7::escape::{unescape, unescape_into};
use qubs_bridge::hl7::{Delimiters, er7::Scope};
use qubs_bridge::mapping::{Body, InboundContext, MapOptions, MappingSet, OutputCheck};
use serde::Serialize;
use serde_json::{Value, json};

/// What the ORU job extracts from one message; owned strings, as every peer produces.
#[derive(Debug, Serialize, PartialEq)]
struct Extracted {
    accession: String,
    status: String,
    interpreter: String,
    text: String,
}

/// The reader queries, parsed once (as the mapping engine does at load time).
struct OruPaths {
    accession: er7::Path,
    status: er7::Path,
    interpreter: er7::Path,
}

impl OruPaths {
    fn new() -> OruPaths {
        let p = |s| er7::Path::parse(s).expect("valid path");
        OruPaths {
            accession: p("OBR-18"),
            status: p("OBR-25"),
            interpreter: p("OBR-32.1"),
        }
    }
}

fn extract(text: &str, paths: &OruPaths) -> Result<Extracted, er7::ReadError> {
    let msg = Message::parse(text)?;
    let d = msg.delimiters();
    let scope = msg.whole();
    let field = |p: &er7::Path| unescape(scope.first(p).unwrap_or(""), &d).into_owned();
    Ok(Extracted {
        accession: field(&paths.accession),
        status: field(&paths.status),
        interpreter: interpreter(&scope, &paths.interpreter, &d),
        text: report_text(&msg, &d),
    })
}

/// OBR-32.1 is a CNN written as sub-components: id&family&given&middle&suffix&prefix.
fn interpreter(scope: &Scope<'_, '_>, path: &er7::Path, d: &Delimiters) -> String {
    let raw = scope.first(path).unwrap_or("");
    let mut parts = [""; 6];
    for (slot, v) in parts.iter_mut().zip(raw.split(d.subcomponent as char)) {
        *slot = v;
    }
    let mut out = String::new();
    for v in [parts[5], parts[2], parts[3], parts[1], parts[4]] {
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        unescape_into(&mut out, v, d);
    }
    out
}

/// OBX-5 of the text observations (OBX-2 `TX`), unescaped, one per line.
fn report_text(msg: &Message<'_>, d: &Delimiters) -> String {
    let mut out = String::new();
    for seg in msg.segments().filter(|s| s.id() == "OBX") {
        if seg.field(2) != Some("TX") {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        unescape_into(&mut out, seg.field(5).unwrap_or(""), d);
    }
    out
}

/// The system allocator, counting calls and bytes while [`COUNTING`] is on: the timed runs
/// leave it off (one relaxed load per call), one extra pass per job turns it on.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

impl CountingAlloc {
    fn count(size: usize) {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            ALLOC_BYTES.fetch_add(size as u64, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is passed on unchanged to the system allocator; counting only reads
// and adds to atomics and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    // A reallocation is counted as one allocation of the new size: it may move the block.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Heap allocations (calls to alloc, alloc_zeroed and realloc) and bytes asked for, per item.
#[derive(Clone, Copy)]
struct Allocs {
    calls: f64,
    bytes: f64,
}

/// What one job measured.
struct Timed<O> {
    /// Seconds of the best run.
    secs: f64,
    /// The last run's outputs.
    outputs: Vec<O>,
    allocs: Allocs,
}

/// Times `f` over every item, best of `runs`, then runs it once more counting allocations.
fn best_of<I, O>(runs: usize, items: &[I], mut f: impl FnMut(&I) -> O) -> Timed<O> {
    let mut best = f64::INFINITY;
    let mut last = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let out: Vec<O> = items.iter().map(|i| f(black_box(i))).collect();
        let secs = start.elapsed().as_secs_f64();
        best = best.min(secs);
        last = black_box(out);
    }
    // The list that keeps the outputs is made before counting starts: only the work counts.
    let mut kept = Vec::with_capacity(items.len());
    ALLOCS.store(0, Ordering::Relaxed);
    ALLOC_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for i in items {
        kept.push(f(black_box(i)));
    }
    COUNTING.store(false, Ordering::Relaxed);
    drop(black_box(kept));
    let n = items.len().max(1) as f64;
    Timed {
        secs: best,
        outputs: last,
        allocs: Allocs {
            calls: ALLOCS.load(Ordering::Relaxed) as f64 / n,
            bytes: ALLOC_BYTES.load(Ordering::Relaxed) as f64 / n,
        },
    }
}

fn report<O>(job: &str, implementation: &str, detail: &str, n: usize, runs: usize, t: &Timed<O>) {
    println!(
        "{}",
        json!({
            "job": job,
            "impl": implementation,
            "detail": detail,
            "items": n,
            "runs": runs,
            "best_s": t.secs,
            "items_per_s": n as f64 / t.secs,
            "allocs_per_item": t.allocs.calls,
            "alloc_bytes_per_item": t.allocs.bytes,
        })
    );
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn read_sorted(dir: &Path, ext: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

fn write_json(path: &Path, v: &(impl Serialize + ?Sized)) {
    std::fs::write(path, serde_json::to_vec_pretty(v).expect("serialisable"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// What every job reads.
struct Bench {
    orus: Vec<String>,
    orders: Vec<Value>,
    expected_reports: Vec<Value>,
    set: MappingSet,
    out: PathBuf,
    runs: usize,
    check: usize,
}

impl Bench {
    fn save(&self, name: &str, items: &[impl Serialize]) {
        write_json(&self.out.join(name), &items[..self.check.min(items.len())]);
    }
}

/// Job 1: ORU^R01 → four values, with the reader and escape module directly.
fn oru_job(b: &Bench) {
    let paths = OruPaths::new();
    let t = best_of(b.runs, &b.orus, |m| {
        extract(m, &paths).expect("corpus ORU reads")
    });
    let n = b.orus.len();
    let detail = "er7::Message + Path queries + unescape";
    report("oru", "qubs-bridge", detail, n, b.runs, &t);
    b.save("oru.json", &t.outputs);
}

/// Job 2: ORU^R01 → QUBS report submission with the whole inbound mapping, as the service
/// runs it per message (`MappingSet::map_oru` with `mappings/oru_to_report.yaml`).
fn report_job(b: &Bench) {
    let ctx = InboundContext {
        domain: Some("acme".into()),
        site: json!({"timeZone": "Australia/Sydney"}),
        config: Value::Null,
    };
    let t = best_of(b.runs, &b.orus, |m| {
        b.set.map_oru(m, &ctx).expect("corpus ORU maps")
    });
    let detail = "map_oru (oru_to_report.yaml) to a report submission";
    report("report", "qubs-bridge", detail, b.orus.len(), b.runs, &t);
    let got = t.outputs;
    // The mapping must agree with the generator on every message, not only the checked ones.
    for (i, (inbound, exp)) in got.iter().zip(&b.expected_reports).enumerate() {
        let s = serde_json::to_value(&inbound.submissions[0]).expect("serialisable");
        assert!(
            inbound.submissions.len() == 1 && &s == exp,
            "map_oru result {i} differs from the generator's:\n{s:#}\n{exp:#}"
        );
    }
    let subs: Vec<&qubs_bridge::mapping::ReportSubmission> =
        got.iter().map(|i| &i.submissions[0]).collect();
    b.save("report.json", &subs);
}

/// Job 3: order → ORM^O01 as the service maps it (the default, basic output check), and
/// with the full check (hl7-parser re-reads every message) for reference.
fn orm_job(b: &Bench) {
    let map = |o: &Value, opts: &MapOptions| match b
        .set
        .map_order_with("orm_o01", o, opts)
        .expect("corpus order maps")
        .body
    {
        Body::Hl7(s) => s,
        Body::Fhir(_) => unreachable!("orm_o01 emits HL7"),
    };
    let n = b.orders.len();
    let opts = MapOptions::default();
    let t = best_of(b.runs, &b.orders, |o| map(o, &opts));
    let detail = "map_order(orm_o01), default output check";
    report("orm", "qubs-bridge", detail, n, b.runs, &t);
    b.save("orm.json", &t.outputs);

    let opts = MapOptions {
        check: Some(OutputCheck::Full),
        ..MapOptions::default()
    };
    let t = best_of(b.runs, &b.orders, |o| map(o, &opts));
    let detail = "map_order(orm_o01), full check: re-parsed by hl7-parser";
    report("orm", "qubs-bridge (full check)", detail, n, b.runs, &t);
}

/// Job 4: order → FHIR ServiceRequest as the service maps it (default check: JSON, elements,
/// types, formats, bindings, references), and with the full check (fhir-sdk's typed R4B
/// parse) for reference.
fn sr_job(b: &Bench) {
    let map = |o: &Value, opts: &MapOptions| match b
        .set
        .map_order_with("service_request", o, opts)
        .expect("corpus order maps")
        .body
    {
        Body::Fhir(v) => v,
        Body::Hl7(_) => unreachable!("service_request emits FHIR"),
    };
    let opts = MapOptions::default();
    let t = best_of(b.runs, &b.orders, |o| map(o, &opts));
    let detail = "map_order(service_request), default output check";
    report("sr", "qubs-bridge", detail, b.orders.len(), b.runs, &t);
    let values: Vec<Value> = t.outputs.iter().map(|j| j.to_value()).collect();
    b.save("sr.json", &values);

    let opts = MapOptions {
        check: Some(OutputCheck::Full),
        ..MapOptions::default()
    };
    let t = best_of(b.runs, &b.orders, |o| map(o, &opts));
    let detail = "map_order(service_request), full check: fhir-sdk typed parse";
    report(
        "sr",
        "qubs-bridge (full check)",
        detail,
        b.orders.len(),
        b.runs,
        &t,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = PathBuf::from(arg(&args, "--corpus").expect("--corpus DIR"));
    let out = PathBuf::from(arg(&args, "--out").expect("--out DIR")).join("qubs-bridge");
    std::fs::create_dir_all(&out).expect("output directory");
    let expected_all = serde_json::from_str::<Vec<Value>>(
        &std::fs::read_to_string(corpus.join("expected_oru.json")).expect("expected_oru.json"),
    )
    .expect("expected JSON");
    let expected_reports = expected_all.iter().map(|v| v["report"].clone()).collect();
    let b = Bench {
        orus: read_sorted(&corpus.join("oru"), "hl7"),
        orders: read_sorted(&corpus.join("orders"), "json")
            .iter()
            .map(|t| serde_json::from_str(t).expect("order JSON"))
            .collect(),
        expected_reports,
        set: MappingSet::load_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings"))
            .expect("mapping set loads"),
        out,
        runs: arg(&args, "--runs").map_or(5, |s| s.parse().expect("--runs N")),
        check: arg(&args, "--check").map_or(50, |s| s.parse().expect("--check N")),
    };
    // `--jobs orm` runs one job alone (for profiling).
    let jobs = arg(&args, "--jobs").unwrap_or_else(|| "oru,report,orm,sr".into());
    for job in jobs.split(',') {
        match job {
            "oru" => oru_job(&b),
            "report" => report_job(&b),
            "orm" => orm_job(&b),
            "sr" => sr_job(&b),
            other => panic!("unknown job {other}: oru, report, orm or sr"),
        }
    }
}
