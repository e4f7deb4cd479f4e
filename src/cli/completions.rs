//! `qubs-bridge completions SHELL` and `qubs-bridge man [--dir DIR]`: shell completion
//! scripts (clap_complete) and manual pages (clap_mangen), both generated from the same
//! command-line definition as the parser, so they cannot fall behind it.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use clap_complete::Shell;
use roff::{Roff, bold, roman};

use super::exit::{EXIT_CODES, usage};
use super::output;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish or powershell (elvish too).
    shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write `qubs-bridge.1` and one page per command (`qubs-bridge-orders-list.1`...) into
    /// this directory, instead of printing the main page.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Environment variables that change how every command behaves (those of single options
/// are listed with the option).
const ENVIRONMENT: [(&str, &str); 5] = [
    (
        "QUBS_BRIDGE__SECTION__KEY",
        "overrides a configuration key of `serve` and `config check` (double underscores)",
    ),
    (
        "RUST_LOG",
        "log filter of `serve`, overriding telemetry.log_filter",
    ),
    ("NO_COLOR", "set to anything: no colour, even on a terminal"),
    (
        "CLICOLOR_FORCE",
        "set to 1: colour even when the output is not a terminal",
    ),
    ("CLICOLOR", "set to 0: no colour"),
];

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    // Rendered first: the generators panic on a failed write, which a closed pipe is.
    let mut script = Vec::new();
    clap_complete::generate(
        args.shell,
        &mut super::command(),
        "qubs-bridge",
        &mut script,
    );
    output::stdout().write_all(&script)?;
    Ok(())
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let mut root = super::command().disable_help_subcommand(true);
    root.build();
    let Some(dir) = args.dir else {
        output::stdout().write_all(&main_page(&root)?)?;
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(|e| usage(format!("--dir {}: {e}", dir.display())))?;
    let mut pages = vec![("qubs-bridge.1".to_string(), main_page(&root)?)];
    let mut pending: Vec<clap::Command> = root.get_subcommands().cloned().collect();
    while let Some(command) = pending.pop() {
        pending.extend(command.get_subcommands().cloned());
        let man = clap_mangen::Man::new(command);
        let mut page = Vec::new();
        man.render(&mut page)?;
        pages.push((man.get_filename(), page));
    }
    pages.sort();
    let mut out = output::stdout();
    for (name, page) in pages {
        let path = dir.join(name);
        std::fs::write(&path, page)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// `qubs-bridge.1`: clap_mangen's sections, then EXIT STATUS and ENVIRONMENT.
fn main_page(root: &clap::Command) -> anyhow::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(root.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let mut roff = Roff::new();
    roff.control("SH", ["OUTPUT"]);
    roff.text([roman(
        "Records go to standard output: text for people (tables without borders, one row per \
         line), or with --format json one JSON object per line (a list has one object per \
         record). Notes, warnings, progress and errors go to standard error; progress only \
         when standard error is a terminal. A closed standard output (as with | head) ends a \
         command quietly, with status 0.",
    )]);
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in ENVIRONMENT {
        roff.control("TP", []);
        roff.text([bold(name)]);
        roff.text([roman(meaning)]);
    }
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    Ok(page)
}
