//! The analyst's tools: `qubs-bridge mappings check|test` and `qubs-bridge map`.
//!
//! `map` writes only the document on stdout (ER7 with CR between segments as sent, one
//! segment per line with `--lf` or on a terminal; FHIR and report JSON pretty-printed), so
//! `map … > out.hl7` is an HL7 file and `map … | jq` works; what an analyst reads about the
//! run (mapping version, unmapped values, unread fields, tolerated input) goes to stderr.
//! `--format json` prints one envelope instead: output, unmapped values, unread fields,
//! warnings and errors.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::exit::usage;
use super::output::{self, Format, note};
use crate::config::Settings;
use crate::mapping::{
    Body, FieldFate, InboundContext, InputKind, LoadErrors, MapError, MapOptions, MappingSet,
    golden, unread,
};
use crate::qubs;

#[derive(Subcommand)]
pub enum MappingsCommand {
    /// Load every mapping file and report all problems (file:line:column and a hint).
    Check {
        /// The mapping directory.
        #[arg(default_value = "mappings")]
        dir: PathBuf,
        /// `text`, or `json`: one object, with every problem's file, line and column.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Run the golden cases in DIR/tests/<case>/ and show, for each mismatch, the fields
    /// that differ (`OBR-24: CT → NMR`, `priority: routine → asap`).
    Test {
        /// The mapping directory.
        #[arg(default_value = "mappings")]
        dir: PathBuf,
        /// Only the cases with this name; `*` and `?` are wildcards (`--case 'order-*'`).
        /// Repeat it for several.
        #[arg(long = "case", value_name = "NAME")]
        cases: Vec<String>,
        /// Accept the current outputs of the cases run (all, or those named by --case) as
        /// their new expectations. Review what changed first.
        #[arg(long, conflicts_with = "interactive")]
        update: bool,
        /// Show each mismatch and ask whether to accept it (needs a terminal on stdin).
        #[arg(long, short = 'i')]
        interactive: bool,
        /// `text`, or `json`: one object per case output and line, with the fields that
        /// differ.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// For each order mapping, every input field and where it goes: the targets it is
    /// sent to, or why it is not sent (`not_sent:` in the file), or that nothing reads it.
    Fields {
        /// The mapping directory.
        #[arg(default_value = "mappings")]
        dir: PathBuf,
        /// Only this mapping.
        #[arg(long)]
        mapping: Option<String>,
        /// The input schema instead: every field a mapping can read, with what it holds
        /// (for --input, default the order).
        #[arg(long, conflicts_with = "cases")]
        schema: bool,
        /// The kind of input for --schema.
        #[arg(long, value_enum, requires = "schema")]
        input: Option<InputArg>,
        /// Across the inputs of all golden cases: every field they hold, in how many cases,
        /// and what each mapping does with it.
        #[arg(long)]
        cases: bool,
        /// `text`, or `json`: one object per mapping and field.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// A kind of mapping input, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputArg {
    /// An order (QUBS appointment, comments, attachments, site).
    Order,
    /// An HL7 ORU^R01.
    Oru,
    /// A FHIR DiagnosticReport.
    DiagnosticReport,
}

impl From<InputArg> for InputKind {
    fn from(a: InputArg) -> InputKind {
        match a {
            InputArg::Order => InputKind::Order,
            InputArg::Oru => InputKind::Oru,
            InputArg::DiagnosticReport => InputKind::DiagnosticReport,
        }
    }
}

#[derive(Args)]
pub struct MapArgs {
    /// The mapping: a file in the mapping directory, or a mapping name.
    #[arg(long)]
    mapping: String,
    /// The input: an order document, a QUBS appointment exactly as the QUBS API returns it,
    /// an ORU^R01 (ER7) or a FHIR DiagnosticReport.
    #[arg(long)]
    input: PathBuf,
    /// IANA time zone of the site (e.g. Australia/Sydney), when the input carries none.
    #[arg(long, value_name = "ZONE")]
    site_tz: Option<String>,
    /// With a bare QUBS appointment: its comments and alerts, as QUBS returns them
    /// (a JSON list).
    #[arg(long, value_name = "FILE")]
    comments: Option<PathBuf>,
    /// With a bare QUBS appointment: its attachments, as QUBS returns them (a JSON list).
    #[arg(long, value_name = "FILE")]
    attachments: Option<PathBuf>,
    /// The QUBS domain, for an input that does not say (a bare appointment without
    /// `domain`, an ORU, a DiagnosticReport).
    #[arg(long)]
    domain: Option<String>,
    /// The mapping directory (default: the mapping file's, else `mappings`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// ER7 output with one segment per line (LF) for reading; the default is CR between
    /// segments, as sent, except on a terminal.
    #[arg(long)]
    lf: bool,
    /// `text`: the document alone on stdout, notes on stderr. `json`: one envelope with the
    /// output, unmapped values, unread fields, warnings and errors.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// The set in `dir`; its problems said on stderr, one per line with file:line:column.
fn load(dir: &Path) -> anyhow::Result<MappingSet> {
    MappingSet::load_dir(dir).map_err(|errors| {
        for d in &errors.0 {
            note!("{d}");
        }
        anyhow::anyhow!("{} problem(s) in {}", errors.0.len(), dir.display())
    })
}

fn problems_json(errors: &LoadErrors) -> Vec<Value> {
    errors
        .0
        .iter()
        .map(|d| {
            json!({"file": d.file.display().to_string(), "line": d.pos.line,
                   "column": d.pos.column, "message": d.message, "hint": d.hint})
        })
        .collect()
}

pub fn run(command: MappingsCommand) -> anyhow::Result<()> {
    let mut out = output::stdout();
    match command {
        MappingsCommand::Check { dir, format } => {
            let set = match (MappingSet::load_dir(&dir), format) {
                (Ok(set), _) => set,
                (Err(errors), Format::Json) => {
                    output::json_line(
                        &mut out,
                        &json!({"ok": false, "dir": dir.display().to_string(),
                                "problems": problems_json(&errors)}),
                    )?;
                    anyhow::bail!("{} problem(s) in {}", errors.0.len(), dir.display());
                }
                (Err(_), Format::Text) => load(&dir)?,
            };
            let names: Vec<&str> = set.names().collect();
            let warnings: Vec<String> = set.warnings().iter().map(|w| w.as_warning()).collect();
            match format {
                Format::Json => output::json_line(
                    &mut out,
                    &json!({"ok": true, "dir": dir.display().to_string(),
                            "version": set.version(), "mappings": names,
                            "warnings": warnings}),
                )?,
                Format::Text => {
                    writeln!(
                        out,
                        "OK: {} mappings in {} ({}): {}",
                        names.len(),
                        dir.display(),
                        set.version(),
                        names.join(", ")
                    )?;
                    for w in &warnings {
                        note!("{w}");
                    }
                }
            }
            Ok(())
        }
        MappingsCommand::Fields {
            dir,
            mapping,
            schema: true,
            input,
            format,
            ..
        } => {
            let kind = match (input, mapping) {
                (Some(i), _) => i.into(),
                (None, Some(name)) => {
                    let set = load(&dir)?;
                    set.get(&name)
                        .map(|m| m.input)
                        .ok_or_else(|| usage(format!("no mapping `{name}` in the set")))?
                }
                (None, None) => InputKind::Order,
            };
            schema(&mut out, kind, format)
        }
        MappingsCommand::Fields {
            dir,
            mapping,
            cases: true,
            format,
            ..
        } => fields_in_cases(&mut out, &load(&dir)?, &dir, mapping.as_deref(), format),
        MappingsCommand::Fields {
            dir,
            mapping,
            format,
            ..
        } => fields(&mut out, &load(&dir)?, mapping.as_deref(), format),
        MappingsCommand::Test {
            dir,
            cases,
            update,
            interactive,
            format,
        } => test(&mut out, &dir, &cases, update, interactive, format),
    }
}

/// `qubs-bridge mappings test`.
fn test(
    out: &mut impl Write,
    dir: &Path,
    cases: &[String],
    update: bool,
    interactive: bool,
    format: Format,
) -> anyhow::Result<()> {
    if interactive && !std::io::stdin().is_terminal() {
        return Err(usage(
            "--interactive asks on the terminal, and stdin is not one; use --update (with --case NAME to pick cases)",
        ));
    }
    let set = load(dir)?;
    let tests = dir.join("tests");
    let report = if interactive {
        let mut prompt = Prompt::default();
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        golden::run_cases(&set, &tests, cases, &mut |p| {
            prompt.ask(p, &mut input, &mut anstream::stderr())
        })
    } else {
        golden::run_cases(&set, &tests, cases, &mut |_| update)
    }
    .map_err(|e| match e {
        golden::GoldenError::NoMatch { .. } => usage(e.to_string()),
        e => e.into(),
    })?;
    match format {
        Format::Text => writeln!(out, "{report}")?,
        Format::Json => {
            for r in &report.results {
                let diffs: Vec<Value> = r
                    .diffs
                    .iter()
                    .map(|d| json!({"path": d.path, "expected": d.expected, "actual": d.actual}))
                    .collect();
                output::json_line(
                    out,
                    &json!({"case": r.name, "status": r.status.as_str(),
                            "detail": r.detail, "diffs": diffs}),
                )?;
            }
            note!("{}", report.summary());
        }
    }
    let (failed, new) = (
        report.count(golden::Status::Failed),
        report.count(golden::Status::New),
    );
    anyhow::ensure!(
        failed + new == 0,
        "{}",
        match (failed, new) {
            (0, _) => format!(
                "{new} case output(s) without expectation: review them (`qubs-bridge map`), then run with --update"
            ),
            _ => format!(
                "{failed} golden case output(s) differ: fix the mapping, or accept the new outputs with --update (--case NAME for one case, -i to decide case by case)"
            ),
        }
    );
    Ok(())
}

/// The interactive accept of `mappings test -i`: each mismatch shown, then a question.
#[derive(Default)]
struct Prompt {
    /// `a` (accept the rest) or `q` (keep the rest) was answered.
    rest: Option<bool>,
}

impl Prompt {
    fn ask(
        &mut self,
        p: &golden::Proposal<'_>,
        input: &mut impl std::io::BufRead,
        out: &mut impl Write,
    ) -> bool {
        if let Some(all) = self.rest {
            return all;
        }
        let _ = if p.new {
            writeln!(
                out,
                "\nNEW {}: no expectation yet; this run's output:\n{}",
                p.name,
                p.actual.trim_end()
            )
        } else {
            writeln!(out, "\nFAIL {}:", p.name)
                .and_then(|()| p.detail.lines().try_for_each(|l| writeln!(out, "    {l}")))
        };
        loop {
            let _ = write!(
                out,
                "Accept as the new expectation? [y]es, [n]o, [a]ll the rest, [q]uit (keep the rest): "
            );
            let _ = out.flush();
            let mut line = String::new();
            // End of input keeps the expectation: nothing is written without a yes.
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                self.rest = Some(false);
                return false;
            }
            match line.trim().to_lowercase().as_str() {
                "y" | "yes" => return true,
                "n" | "no" | "" => return false,
                "a" | "all" => {
                    self.rest = Some(true);
                    return true;
                }
                "q" | "quit" => {
                    self.rest = Some(false);
                    return false;
                }
                _ => {}
            }
        }
    }
}

/// `qubs-bridge mappings fields`: what each order mapping does with each input field.
fn fields(
    out: &mut impl Write,
    set: &MappingSet,
    only: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let names: Vec<String> = match only {
        Some(n) => {
            anyhow::ensure!(set.get(n).is_some(), "no mapping `{n}` in the set");
            vec![n.to_string()]
        }
        None => set
            .names()
            .filter(|n| set.get(n).is_some_and(|m| m.input == InputKind::Order))
            .map(str::to_string)
            .collect(),
    };
    let mut unaccounted = 0;
    for name in names {
        if format == Format::Text {
            writeln!(out, "{name}:")?;
        }
        for (field, fate) in set.field_fates(&name).unwrap_or_default() {
            let (fate_name, detail) = match &fate {
                FieldFate::Sent(t) => ("sent", json!(t)),
                FieldFate::Used(t) => ("used", json!(t)),
                FieldFate::NotSent(reason) => ("not_sent", json!(reason)),
                FieldFate::Unaccounted => {
                    unaccounted += 1;
                    ("unaccounted", Value::Null)
                }
            };
            match format {
                Format::Json => output::json_line(
                    out,
                    &json!({"mapping": name, "field": field, "fate": fate_name, "detail": detail}),
                )?,
                Format::Text => {
                    let what = match fate {
                        FieldFate::Sent(t) => format!("-> {}", t.join(", ")),
                        FieldFate::Used(t) => format!("decides {}", t.join(", ")),
                        FieldFate::NotSent(reason) => format!("not sent: {reason}"),
                        FieldFate::Unaccounted => {
                            "NOT READ and not listed under not_sent".to_string()
                        }
                    };
                    writeln!(out, "  {field:<45} {what}")?;
                }
            }
        }
    }
    if unaccounted > 0 {
        note!("{unaccounted} field(s) neither sent nor listed under `not_sent`");
    }
    Ok(())
}

fn kind_name(k: InputKind) -> &'static str {
    match k {
        InputKind::Order => "order",
        InputKind::Oru => "oru",
        InputKind::DiagnosticReport => "diagnostic_report",
    }
}

/// `qubs-bridge mappings fields --schema`: what a mapping reading `kind` can read.
fn schema(out: &mut impl Write, kind: InputKind, format: Format) -> anyhow::Result<()> {
    let fields = crate::mapping::schema::fields(kind);
    match format {
        Format::Json => {
            for f in &fields {
                output::json_line(
                    out,
                    &json!({"input": kind_name(kind), "field": f.path, "description": f.description}),
                )?;
            }
        }
        Format::Text => {
            let mut t =
                output::Table::new(&[output::Column::left("FIELD"), output::Column::left("HOLDS")]);
            for f in &fields {
                t.row([f.path.clone(), output::or_dash(&f.description).to_string()]);
            }
            t.print(out)?;
        }
    }
    Ok(())
}

/// `qubs-bridge mappings fields --cases`: every field the golden cases' inputs hold, in how
/// many cases, and what each mapping does with it.
fn fields_in_cases(
    out: &mut impl Write,
    set: &MappingSet,
    dir: &Path,
    only: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    if let Some(n) = only {
        anyhow::ensure!(set.get(n).is_some(), "no mapping `{n}` in the set");
    }
    let inputs = golden::case_inputs(&dir.join("tests"))?;
    let mut first = true;
    for kind in [
        InputKind::Order,
        InputKind::Oru,
        InputKind::DiagnosticReport,
    ] {
        let mappings: Vec<&crate::mapping::Compiled> = set
            .names()
            .filter(|n| only.is_none_or(|o| o == *n))
            .filter_map(|n| set.get(n))
            .filter(|m| m.input == kind)
            .collect();
        let cases: Vec<&golden::CaseInput> = inputs.iter().filter(|c| c.kind == kind).collect();
        if mappings.is_empty() || cases.is_empty() {
            continue;
        }
        // Field -> number of cases holding it; mapping -> fields it leaves unread somewhere.
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut unread: Vec<std::collections::HashSet<String>> =
            vec![Default::default(); mappings.len()];
        for c in &cases {
            let present = match kind {
                InputKind::Order => unread::order_present(&c.json()?),
                InputKind::Oru => unread::oru_present(&c.text()),
                InputKind::DiagnosticReport => unread::diagnostic_report_present(&c.json()?),
            };
            for f in present {
                match counts.iter_mut().find(|(k, _)| *k == f) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((f, 1)),
                }
            }
            for (i, m) in mappings.iter().enumerate() {
                let left = match kind {
                    InputKind::Order => Vec::new(),
                    InputKind::Oru => unread::oru(m, &c.text()),
                    InputKind::DiagnosticReport => unread::diagnostic_report(m, &c.json()?),
                };
                unread[i].extend(left);
            }
        }
        if kind != InputKind::Oru {
            counts.sort();
        }
        let fate = |i: usize, field: &str| -> &'static str {
            if kind == InputKind::Order {
                return match mappings[i].field_fate(field) {
                    FieldFate::Sent(_) => "sent",
                    FieldFate::Used(_) => "decides",
                    FieldFate::NotSent(_) => "not_sent",
                    FieldFate::Unaccounted => "NOT READ",
                };
            }
            // A field read only in part (some components) is listed by its unread parts.
            let partly = unread[i]
                .iter()
                .any(|u| u.starts_with(&format!("{field}.")));
            if unread[i].contains(field) {
                "NOT READ"
            } else if partly {
                "partly"
            } else {
                "read"
            }
        };
        match format {
            Format::Json => {
                for (field, n) in &counts {
                    let per: serde_json::Map<String, Value> = mappings
                        .iter()
                        .enumerate()
                        .map(|(i, m)| (m.name.clone(), json!(fate(i, field))))
                        .collect();
                    output::json_line(
                        out,
                        &json!({"input": kind_name(kind), "field": field, "cases": n, "mappings": per}),
                    )?;
                }
            }
            Format::Text => {
                if !first {
                    writeln!(out)?;
                }
                let head = format!("{} FIELD", kind_name(kind).to_uppercase());
                let mut rows: Vec<Vec<String>> = vec![
                    [head, "CASES".into()]
                        .into_iter()
                        .chain(mappings.iter().map(|m| m.name.to_uppercase()))
                        .collect(),
                ];
                for (field, n) in &counts {
                    rows.push(
                        [field.clone(), n.to_string()]
                            .into_iter()
                            .chain((0..mappings.len()).map(|i| fate(i, field).to_string()))
                            .collect(),
                    );
                }
                let widths: Vec<usize> = (0..rows[0].len())
                    .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
                    .collect();
                for r in &rows {
                    let line: Vec<String> = r
                        .iter()
                        .zip(&widths)
                        .map(|(cell, w)| format!("{cell:<w$}"))
                        .collect();
                    writeln!(out, "{}", line.join("  ").trim_end())?;
                }
            }
        }
        first = false;
        note!(
            "{} field(s) in the inputs of {} {} case(s)",
            counts.len(),
            cases.len(),
            kind_name(kind)
        );
    }
    Ok(())
}

/// What one `map` run produced.
struct MapRun {
    /// The document: ER7 text, FHIR JSON, or the report submissions.
    output: Body,
    unmapped: Vec<crate::mapping::Unmapped>,
    unread: Vec<String>,
    warnings: Vec<String>,
}

/// A failed `map` run: the error as the analyst reads it (values shown: the analyst gave
/// the input) and a hint.
#[derive(Debug)]
struct MapFailed {
    message: String,
    hint: Option<String>,
}

impl std::fmt::Display for MapFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for MapFailed {}

/// `qubs-bridge map`: one input through one mapping, with what an analyst needs to judge it.
pub fn map(args: MapArgs) -> anyhow::Result<()> {
    let as_path = Path::new(&args.mapping);
    let dir = match (&args.dir, as_path.is_file()) {
        (Some(d), _) => d.clone(),
        (None, true) => as_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        (None, false) => PathBuf::from("mappings"),
    };
    let bytes = std::fs::read(&args.input)
        .map_err(|e| usage(format!("--input {}: {e}", args.input.display())))?;
    let mut out = output::stdout();
    let set = match (MappingSet::load_dir(&dir), args.format) {
        (Ok(set), _) => set,
        (Err(errors), Format::Json) => {
            output::json_line(
                &mut out,
                &json!({"mapping": args.mapping, "output": null, "errors": problems_json(&errors)}),
            )?;
            anyhow::bail!("{} problem(s) in {}", errors.0.len(), dir.display());
        }
        (Err(_), Format::Text) => load(&dir)?,
    };
    let name = if as_path.is_file() {
        let file = as_path.canonicalize()?;
        set.names()
            .find(|n| {
                set.get(n)
                    .and_then(|m| m.file.canonicalize().ok())
                    .is_some_and(|f| f == file)
            })
            .map(str::to_string)
            .ok_or_else(|| {
                usage(format!(
                    "{} is not a mapping of {}",
                    args.mapping,
                    dir.display()
                ))
            })?
    } else {
        args.mapping.clone()
    };
    if set.get(&name).is_none() {
        let names: Vec<&str> = set.names().collect();
        return Err(usage(format!(
            "no mapping `{name}`; the set has: {}",
            names.join(", ")
        )));
    }
    let run = run_mapping(&set, &name, &args, &bytes);
    match args.format {
        Format::Json => {
            let envelope = match &run {
                Ok(r) => json!({
                    "mapping": name,
                    "mappingSetVersion": set.version(),
                    "output": match &r.output {
                        Body::Fhir(v) => v.clone(),
                        Body::Hl7(er7) => Value::String(er7.clone()),
                    },
                    "unmapped": r.unmapped,
                    "unreadFields": r.unread,
                    "warnings": r.warnings,
                    "errors": [],
                }),
                Err(e) => {
                    let (message, hint) = match e.downcast_ref::<MapFailed>() {
                        Some(f) => (f.message.clone(), f.hint.clone()),
                        None => (super::exit::render(e), None),
                    };
                    json!({
                        "mapping": name,
                        "mappingSetVersion": set.version(),
                        "output": null,
                        "unmapped": [],
                        "unreadFields": [],
                        "warnings": [],
                        "errors": [{"message": message, "hint": hint}],
                    })
                }
            };
            output::json_line(&mut out, &envelope)?;
            // The error is in the envelope; the exit status still says the run failed.
            run?;
        }
        Format::Text => {
            let r = run?;
            match &r.output {
                Body::Fhir(v) => writeln!(out, "{}", serde_json::to_string_pretty(v)?)?,
                Body::Hl7(er7) if args.lf || std::io::stdout().is_terminal() => {
                    write!(out, "{}", output::segments_per_line(er7))?
                }
                Body::Hl7(er7) => write!(out, "{er7}")?,
            }
            out.flush()?;
            note!("mapping {name} ({})", set.version());
            if r.unmapped.is_empty() {
                note!("unmapped values: none");
            } else {
                note!("unmapped values:");
                for u in &r.unmapped {
                    note!("  table {}: `{}` x{}", u.table, u.value, u.count);
                }
            }
            if !r.unread.is_empty() {
                note!("input fields no rule read:");
                for f in &r.unread {
                    note!("  {f}");
                }
            }
            for w in &r.warnings {
                note!("tolerated: {w}");
            }
        }
    }
    Ok(())
}

/// Runs the mapping on the input the way the service would.
fn run_mapping(
    set: &MappingSet,
    name: &str,
    args: &MapArgs,
    bytes: &[u8],
) -> anyhow::Result<MapRun> {
    let compiled = set
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("no mapping `{name}`"))?;
    let text = crate::hl7::er7::decode_bytes(bytes).into_owned();
    let site = args
        .site_tz
        .as_ref()
        .map(|z| json!({"siteName": "", "timeZone": z}))
        .unwrap_or(Value::Null);
    // Mapping files read `config.*`: use the configured values when a config is at hand.
    let config = Settings::load_unchecked(None, std::env::vars())
        .map(|s| s.mappings.values)
        .unwrap_or_default();
    let not_json =
        |e: serde_json::Error| usage(format!("--input {} is not JSON: {e}", args.input.display()));
    if compiled.input != InputKind::Order
        && let Some(flag) = [
            ("--comments", &args.comments),
            ("--attachments", &args.attachments),
        ]
        .iter()
        .find_map(|(f, v)| v.is_some().then_some(f))
    {
        return Err(usage(format!(
            "{flag} is for an order mapping's bare QUBS appointment; `{name}` reads results"
        )));
    }
    let failed = |e: MapError, zone_known: bool| -> anyhow::Error {
        let hint = (!zone_known && is_missing_zone(&e)).then(|| {
            "pass --site-tz with the site's IANA time zone, e.g. --site-tz Australia/Sydney"
                .to_string()
        });
        anyhow::Error::new(MapFailed {
            message: analyst_message(&e, compiled),
            hint,
        })
    };
    Ok(match compiled.input {
        InputKind::Order => {
            let input: Value =
                serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(not_json)?;
            let order = order_document(input, args, &config)?;
            let zone_known = order
                .pointer("/site/timeZone")
                .and_then(Value::as_str)
                .is_some_and(|z| !z.trim().is_empty());
            let run = set
                .dry_run(name, &order, &MapOptions::default())
                .map_err(|e| failed(e, zone_known))?;
            MapRun {
                output: run.output.body,
                unmapped: run.output.unmapped,
                unread: run.unread_fields,
                warnings: Vec::new(),
            }
        }
        kind => {
            let zone_known = args.site_tz.is_some();
            let ctx = InboundContext {
                domain: args.domain.clone(),
                site,
                config: Value::Object(config),
            };
            let (inbound, unread) = if kind == InputKind::Oru {
                let inbound = set
                    .map_oru_bytes_with(name, bytes, &ctx)
                    .map_err(|e| failed(e, zone_known))?;
                let decoded = crate::hl7::charset::decode(bytes);
                (inbound, unread::oru(compiled, &decoded.text))
            } else {
                let v: Value = serde_json::from_str(&text).map_err(not_json)?;
                let inbound = set
                    .map_diagnostic_report(&v, &ctx)
                    .map_err(|e| failed(e, zone_known))?;
                (inbound, unread::diagnostic_report(compiled, &v))
            };
            MapRun {
                output: Body::Fhir(serde_json::to_value(&inbound.submissions)?),
                unmapped: inbound.unmapped,
                unread,
                warnings: inbound.warnings,
            }
        }
    })
}

/// The order document for an order mapping: the input itself when it is one (with
/// `--site-tz` filling a missing zone), or a bare QUBS appointment — as `GET
/// …/appointments/{id}` or an item of the pending list returns it — assembled with its
/// comments, attachments and site the way the service assembles it.
fn order_document(
    input: Value,
    args: &MapArgs,
    config: &serde_json::Map<String, Value>,
) -> anyhow::Result<Value> {
    let shown = args.input.display();
    if input.get("appointment").is_some() {
        if let Some(flag) = [
            ("--comments", &args.comments),
            ("--attachments", &args.attachments),
        ]
        .iter()
        .find_map(|(f, v)| v.is_some().then_some(f))
        {
            return Err(usage(format!(
                "{flag} is for a bare QUBS appointment; {shown} is an order document with its own `comments` and `attachments`"
            )));
        }
        let mut order = input;
        if let (Some(o), Some(zone)) = (order.as_object_mut(), &args.site_tz) {
            let site = o.entry("site").or_insert(Value::Null);
            if !site.is_object() {
                *site = json!({"siteName": ""});
            }
            if site
                .get("timeZone")
                .and_then(Value::as_str)
                .is_none_or(|z| z.trim().is_empty())
            {
                site["timeZone"] = Value::String(zone.clone());
            }
            o.entry("config").or_insert(Value::Object(config.clone()));
        } else if let Some(o) = order.as_object_mut() {
            o.entry("config").or_insert(Value::Object(config.clone()));
        }
        return Ok(order);
    }
    let appointment = match input.get("items").and_then(Value::as_array) {
        Some(items) if items.len() == 1 => items[0].clone(),
        Some(items) => {
            return Err(usage(format!(
                "{shown} is a page of {} pending appointments; map one at a time, e.g. `jq '.items[0]' {shown} > one.json`",
                items.len()
            )));
        }
        None => input,
    };
    let appointment = qubs::Appointment::from_json(appointment).map_err(|e| {
        usage(format!(
            "{shown} is neither an order document (with `appointment`) nor a QUBS appointment: {e}"
        ))
    })?;
    let comments: Vec<qubs::Comment> = list_file(args.comments.as_deref(), "--comments")?;
    let attachments: Vec<qubs::Attachment> =
        list_file(args.attachments.as_deref(), "--attachments")?;
    let domain = args
        .domain
        .clone()
        .or_else(|| appointment.domain().map(str::to_string))
        .unwrap_or_default();
    let site = args.site_tz.as_ref().map(|zone| qubs::SiteSettings {
        domain: Some(domain.clone()),
        site_name: appointment.scheduled_site().map(str::to_string),
        time_zone: Some(zone.clone()),
        extra: Default::default(),
    });
    let order = crate::orders::Order {
        domain,
        appointment,
        comments,
        attachments,
        site,
    };
    Ok(order.to_json(config))
}

/// A JSON list file as QUBS returns it (`[...]`, or `{"items": [...]}`); empty without one.
fn list_file<T: serde::de::DeserializeOwned>(
    path: Option<&Path>,
    flag: &str,
) -> anyhow::Result<Vec<T>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| usage(format!("{flag} {shown}: {e}")))?;
    let v: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| usage(format!("{flag} {shown} is not JSON: {e}")))?;
    let items = match v {
        Value::Array(items) => items,
        Value::Object(mut o) if o.get("items").is_some_and(Value::is_array) => {
            match o.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        }
        _ => return Err(usage(format!("{flag} {shown} must be a JSON list"))),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value(item)
                .map_err(|e| usage(format!("{flag} {shown}: item {i}: {e}")))
        })
        .collect()
}

/// Whether the mapping failed for want of the site's time zone.
fn is_missing_zone(e: &MapError) -> bool {
    match e {
        MapError::InGroup { source, .. } => is_missing_zone(source),
        MapError::Value { reason, .. } => reason.contains("no site time zone"),
        _ => false,
    }
}

/// A mapping error as the offline tool says it: once, with the offending value (the analyst
/// gave the input; the service never shows values), and for a value a code table lacks,
/// where that table's values are written.
fn analyst_message(e: &MapError, m: &crate::mapping::Compiled) -> String {
    match e {
        MapError::InGroup {
            msh10,
            group,
            source,
        } => format!(
            "message {msh10}, order group {group}: {}",
            analyst_message(source, m)
        ),
        MapError::Unmapped {
            rule,
            table,
            sources,
            value,
        } => {
            let what = if sources.is_empty() || sources.contains(" | ") || sources.contains('{') {
                format!("the value `{value}`")
            } else {
                format!("{sources} `{value}`")
            };
            let mut s = format!(
                "{rule}: {what} is not in code table `{table}` (its policy is `unmapped: error`)"
            );
            if let Some((file, line)) = m
                .tables
                .iter()
                .find(|t| &t.name == table)
                .and_then(|t| t.values_at.as_ref())
            {
                s.push_str(&format!(
                    "; add it under `values:` at {}:{line}",
                    shown_file(file, &m.file)
                ));
            }
            s
        }
        other => other.to_string(),
    }
}

/// A table file's path as the analyst wrote it: relative to the mapping's directory.
fn shown_file(file: &Path, mapping: &Path) -> String {
    mapping
        .parent()
        .and_then(|dir| file.strip_prefix(dir).ok())
        .unwrap_or(file)
        .display()
        .to_string()
}
#[cfg(test)]
mod tests {
    use super::*;

    fn proposal<'a>(name: &'a str) -> golden::Proposal<'a> {
        golden::Proposal {
            name,
            new: false,
            detail: "OBR-24: CT → NMR",
            actual: "MSH|…",
        }
    }

    #[test]
    fn the_prompt_accepts_only_a_yes_and_remembers_all_and_quit() {
        let mut shown = Vec::new();
        let mut prompt = Prompt::default();
        let mut input = std::io::Cursor::new("maybe\ny\nn\na\n");
        assert!(prompt.ask(&proposal("c1/orm_o01.hl7"), &mut input, &mut shown));
        assert!(!prompt.ask(&proposal("c2/orm_o01.hl7"), &mut input, &mut shown));
        assert!(prompt.ask(&proposal("c3/orm_o01.hl7"), &mut input, &mut shown));
        // `a` answered: the rest are accepted without asking.
        assert!(prompt.ask(&proposal("c4/orm_o01.hl7"), &mut input, &mut shown));
        let shown = String::from_utf8(shown).unwrap();
        assert!(
            shown.contains("FAIL c1/orm_o01.hl7:\n    OBR-24: CT → NMR"),
            "{shown}"
        );
        assert!(!shown.contains("c4/"), "{shown}");
        // `maybe` asked again; end of input keeps everything as it is.
        assert_eq!(shown.matches("Accept as the new expectation?").count(), 4);
        let mut quiet = Prompt::default();
        let mut empty = std::io::Cursor::new("");
        assert!(!quiet.ask(&proposal("c5/x"), &mut empty, &mut Vec::new()));
        let mut quit = Prompt::default();
        let mut q = std::io::Cursor::new("q\n");
        assert!(!quit.ask(&proposal("c6/x"), &mut q, &mut Vec::new()));
        assert!(!quit.ask(&proposal("c7/x"), &mut q, &mut Vec::new()));
    }
}
