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
    Body, FieldFate, InboundContext, InputKind, LoadErrors, MapOptions, MappingSet, golden,
};

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
        /// `text`, or `json`: one object per mapping and field.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Args)]
pub struct MapArgs {
    /// The mapping: a file in the mapping directory, or a mapping name.
    #[arg(long)]
    mapping: String,
    /// The input: an order JSON document, an ORU^R01 (ER7) or a FHIR DiagnosticReport.
    #[arg(long)]
    input: PathBuf,
    /// IANA time zone of the site, when the input carries none.
    #[arg(long)]
    site_tz: Option<String>,
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
            format,
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

/// What one `map` run produced.
struct MapRun {
    /// The document: ER7 text, FHIR JSON, or the report submissions.
    output: Body,
    unmapped: Vec<crate::mapping::Unmapped>,
    unread: Vec<String>,
    warnings: Vec<String>,
}

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
                Err(e) => json!({
                    "mapping": name,
                    "mappingSetVersion": set.version(),
                    "output": null,
                    "unmapped": [],
                    "unreadFields": [],
                    "warnings": [],
                    "errors": [{"message": super::exit::render(e)}],
                }),
            };
            output::json_line(&mut out, &envelope)?;
            // The error is in the envelope; the exit status still says the run failed.
            if let Err(e) = run {
                return Err(e.context(format!("mapping `{name}` failed")));
            }
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
        .map(|s| Value::Object(s.mappings.values))
        .unwrap_or(Value::Null);
    Ok(match compiled.input {
        InputKind::Order => {
            let mut order: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
                .map_err(|e| usage(format!("--input {} is not JSON: {e}", args.input.display())))?;
            if let Some(o) = order.as_object_mut() {
                if !site.is_null() && o.get("site").is_none_or(Value::is_null) {
                    o.insert("site".into(), site);
                }
                o.entry("config").or_insert(config);
            }
            let run = set.dry_run(name, &order, &MapOptions::default())?;
            MapRun {
                output: run.output.body,
                unmapped: run.output.unmapped,
                unread: run.unread_fields,
                warnings: Vec::new(),
            }
        }
        kind => {
            let ctx = InboundContext {
                domain: None,
                site,
                config,
            };
            let inbound = if kind == InputKind::Oru {
                set.map_oru_bytes_with(name, bytes, &ctx)?
            } else {
                let v: Value = serde_json::from_str(&text).map_err(|e| {
                    usage(format!("--input {} is not JSON: {e}", args.input.display()))
                })?;
                set.map_diagnostic_report(&v, &ctx)?
            };
            MapRun {
                output: Body::Fhir(serde_json::to_value(&inbound.submissions)?),
                unmapped: inbound.unmapped,
                unread: Vec::new(),
                warnings: inbound.warnings,
            }
        }
    })
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
