//! The analyst's tools: `qubs-bridge mappings check|test` and `qubs-bridge map`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Settings;
use crate::mapping::{Body, FieldFate, InboundContext, InputKind, MapOptions, MappingSet, golden};

#[derive(Subcommand)]
pub enum MappingsCommand {
    /// Load every mapping file and report all problems (file:line:column and a hint).
    Check {
        /// The mapping directory.
        #[arg(default_value = "mappings")]
        dir: PathBuf,
    },
    /// Run the golden cases in DIR/tests/<case>/ and show a diff for each mismatch.
    Test {
        /// The mapping directory.
        #[arg(default_value = "mappings")]
        dir: PathBuf,
        /// Accept the current outputs as the new expectations.
        #[arg(long)]
        update: bool,
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
}

fn load(dir: &Path) -> anyhow::Result<MappingSet> {
    MappingSet::load_dir(dir).map_err(|errors| {
        anyhow::anyhow!(
            "{errors}\n{} problem(s) in {}",
            errors.0.len(),
            dir.display()
        )
    })
}

pub fn run(command: MappingsCommand) -> anyhow::Result<()> {
    match command {
        MappingsCommand::Check { dir } => {
            let set = load(&dir)?;
            let names: Vec<&str> = set.names().collect();
            println!(
                "OK: {} mappings in {} ({}): {}",
                names.len(),
                dir.display(),
                set.version(),
                names.join(", ")
            );
            for w in set.warnings() {
                println!("{}", w.as_warning());
            }
            Ok(())
        }
        MappingsCommand::Fields { dir, mapping } => fields(&load(&dir)?, mapping.as_deref()),
        MappingsCommand::Test { dir, update } => {
            let set = load(&dir)?;
            let report = golden::run(&set, &dir.join("tests"), update)?;
            println!("{report}");
            anyhow::ensure!(
                report.passed(),
                "golden cases failed (run with --update to accept the new outputs)"
            );
            Ok(())
        }
    }
}

/// `qubs-bridge mappings fields`: what each order mapping does with each input field.
fn fields(set: &MappingSet, only: Option<&str>) -> anyhow::Result<()> {
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
        println!("{name}:");
        for (field, fate) in set.field_fates(&name).unwrap_or_default() {
            let what = match fate {
                FieldFate::Sent(t) => format!("-> {}", t.join(", ")),
                FieldFate::Used(t) => format!("decides {}", t.join(", ")),
                FieldFate::NotSent(reason) => format!("not sent: {reason}"),
                FieldFate::Unaccounted => {
                    unaccounted += 1;
                    "NOT READ and not listed under not_sent".to_string()
                }
            };
            println!("  {field:<45} {what}");
        }
    }
    if unaccounted > 0 {
        println!("{unaccounted} field(s) neither sent nor listed under `not_sent`");
    }
    Ok(())
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
    let set = load(&dir)?;
    let name = if as_path.is_file() {
        let file = as_path.canonicalize()?;
        set.names()
            .find(|n| {
                set.get(n)
                    .and_then(|m| m.file.canonicalize().ok())
                    .is_some_and(|f| f == file)
            })
            .map(str::to_string)
            .with_context(|| format!("{} is not a mapping of {}", args.mapping, dir.display()))?
    } else {
        args.mapping.clone()
    };
    let compiled = set.get(&name).with_context(|| {
        let names: Vec<&str> = set.names().collect();
        format!("no mapping `{name}`; the set has: {}", names.join(", "))
    })?;
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let text = crate::hl7::er7::decode_bytes(&bytes).into_owned();
    let site = args
        .site_tz
        .as_ref()
        .map(|z| json!({"siteName": "", "timeZone": z}))
        .unwrap_or(Value::Null);
    // Mapping files read `config.*`: use the configured values when a config is at hand.
    let config = Settings::load_unchecked(None, std::env::vars())
        .map(|s| Value::Object(s.mappings.values))
        .unwrap_or(Value::Null);
    let (output, unmapped, unread, warnings) = match compiled.input {
        InputKind::Order => {
            let mut order: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
                .with_context(|| format!("{} is not JSON", args.input.display()))?;
            if let Some(o) = order.as_object_mut() {
                if !site.is_null() && o.get("site").is_none_or(Value::is_null) {
                    o.insert("site".into(), site);
                }
                o.entry("config").or_insert(config);
            }
            let run = set.dry_run(&name, &order, &MapOptions::default())?;
            let out = match run.output.body {
                Body::Fhir(v) => serde_json::to_string_pretty(&v)?,
                Body::Hl7(s) => s.replace('\r', "\n"),
            };
            (out, run.output.unmapped, run.unread_fields, Vec::new())
        }
        kind => {
            let ctx = InboundContext {
                domain: None,
                site,
                config,
            };
            let inbound = if kind == InputKind::Oru {
                set.map_oru_with(&name, &text, &ctx)?
            } else {
                let v: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", args.input.display()))?;
                set.map_diagnostic_report(&v, &ctx)?
            };
            (
                serde_json::to_string_pretty(&inbound.submissions)?,
                inbound.unmapped,
                Vec::new(),
                inbound.warnings,
            )
        }
    };
    println!("{output}");
    println!("\n# mapping {name} ({})", set.version());
    if unmapped.is_empty() {
        println!("# unmapped values: none");
    } else {
        println!("# unmapped values:");
        for u in &unmapped {
            println!("#   table {}: `{}` x{}", u.table, u.value, u.count);
        }
    }
    if !unread.is_empty() {
        println!("# input fields no rule read:");
        for f in &unread {
            println!("#   {f}");
        }
    }
    for w in &warnings {
        println!("# tolerated: {w}");
    }
    Ok(())
}
