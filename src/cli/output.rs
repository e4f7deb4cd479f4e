//! How the CLI prints. Records go to stdout — text for people (tables without borders,
//! one row per line so `grep` and `head` work) or `--format json`, one JSON object per line
//! for `jq`. Notes, warnings and progress go to stderr, progress only when stderr is a
//! terminal. Colour goes through anstream: only on a terminal, never with `NO_COLOR`.
//!
//! Every write returns its error, so a closed stdout (`| head`) ends the command through
//! [`super::exit::finish`], quietly, instead of a panic in `println!`.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use clap::ValueEnum;
use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, TableStyle, Width};
use serde_json::Value;

/// `--format`: for people or for scripts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: tables, documents, one line per record.
    #[default]
    #[value(alias = "table")]
    Text,
    /// For scripts: one JSON object per line (records of a list each on their own line).
    Json,
}

/// Standard output, with colour when it is a terminal (and `NO_COLOR` is unset).
pub fn stdout() -> anstream::AutoStream<io::StdoutLock<'static>> {
    anstream::AutoStream::auto(io::stdout().lock())
}

/// Writes one JSON object on its own line.
pub fn json_line(out: &mut impl Write, value: &Value) -> io::Result<()> {
    writeln!(out, "{value}")
}

/// A note for the person at the terminal, on stderr. Never fails the command: a closed
/// stderr only loses the note.
pub fn write_note(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(anstream::stderr(), "{args}");
}

/// `note!("...", args)`: a line on stderr (see [`write_note`]).
macro_rules! note {
    ($($arg:tt)*) => { $crate::cli::output::write_note(format_args!($($arg)*)) };
}
pub(crate) use note;

/// A warning on stderr, its label in yellow on a terminal.
pub fn warning(args: std::fmt::Arguments<'_>) {
    let style = anstyle::Style::new()
        .bold()
        .fg_color(Some(anstyle::AnsiColor::Yellow.into()));
    let _ = writeln!(anstream::stderr(), "{style}warning:{style:#} {args}");
}

/// An acknowledgement code, green when accepted and red otherwise (on a terminal).
pub fn ack_code(code: &str) -> String {
    let colour = if matches!(code, "AA" | "CA") {
        anstyle::AnsiColor::Green
    } else {
        anstyle::AnsiColor::Red
    };
    let style = anstyle::Style::new().bold().fg_color(Some(colour.into()));
    // Padded before styling: escape codes must not count as width.
    format!("{style}{code:<3}{style:#}")
}

/// A column of a text table.
#[derive(Clone, Copy)]
pub struct Column {
    pub title: &'static str,
    /// Numbers are right-aligned.
    pub right: bool,
    /// For tables printed row by row (streams): the width every row is padded to.
    pub width: u16,
}

impl Column {
    /// A left-aligned column.
    pub const fn left(title: &'static str) -> Column {
        Column {
            title,
            right: false,
            width: 0,
        }
    }

    /// A right-aligned (numeric) column.
    pub const fn right(title: &'static str) -> Column {
        Column {
            title,
            right: true,
            width: 0,
        }
    }

    /// The same column, padded to `width` when rows are printed one by one.
    pub const fn width(self, width: u16) -> Column {
        Column { width, ..self }
    }
}

/// A borderless text table (as `kubectl get` or `docker ps` print): a bold header on a
/// terminal, two spaces between columns, never wrapped.
pub struct Table {
    table: comfy_table::Table,
    columns: Vec<Column>,
    header: bool,
}

impl Table {
    /// A table with a header row.
    pub fn new(columns: &[Column]) -> Table {
        let mut table = Table::bare(columns);
        table.table.set_header(columns.iter().map(|c| c.title));
        table.header = true;
        table.layout();
        table
    }

    /// A record shown as `field  value` lines, without a header.
    pub fn fields() -> Table {
        Table::bare(&[Column::left("FIELD"), Column::left("VALUE")])
    }

    fn bare(columns: &[Column]) -> Table {
        let mut table = comfy_table::Table::new();
        table
            .load_style(TableStyle::new())
            .set_content_arrangement(ContentArrangement::Disabled);
        Table {
            table,
            columns: columns.to_vec(),
            header: false,
        }
    }

    /// Padding, alignment and widths, once the columns exist (after the header or the
    /// first row).
    fn layout(&mut self) {
        let last = self.columns.len().saturating_sub(1);
        for (i, (column, spec)) in self.table.column_iter_mut().zip(&self.columns).enumerate() {
            column.set_padding((0, if i == last { 0 } else { 2 }));
            if spec.right {
                column.set_cell_alignment(CellAlignment::Right);
            }
            if spec.width > 0 {
                column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(spec.width)));
            }
        }
    }

    /// Adds a row (one cell per column).
    pub fn row<I, S>(&mut self, cells: I) -> &mut Table
    where
        I: IntoIterator<Item = S>,
        S: Into<comfy_table::Cell>,
    {
        let first = self.table.is_empty() && !self.header;
        self.table.add_row(cells);
        if first {
            self.layout();
        }
        self
    }

    /// Prints the header (bold on a terminal) and every row.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        self.print_from(out, 0)
    }

    fn print_from(&self, out: &mut impl Write, first: usize) -> io::Result<()> {
        let bold = anstyle::Style::new().bold();
        for (i, line) in self.table.lines().enumerate().skip(first) {
            let line = line.trim_end();
            if i == 0 && self.header {
                writeln!(out, "{bold}{line}{bold:#}")?;
            } else {
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    }

    /// For streams, whose rows are printed as they come: the header alone, in the columns'
    /// widths.
    pub fn stream_header(columns: &[Column], out: &mut impl Write) -> io::Result<()> {
        Table::new(columns).print(out)
    }

    /// For streams: one row, in the columns' widths (wider only where a value is).
    pub fn stream_row<I, S>(columns: &[Column], cells: I, out: &mut impl Write) -> io::Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<comfy_table::Cell>,
    {
        let mut table = Table::new(columns);
        table.row(cells);
        table.print_from(out, 1)
    }
}

/// Progress of a long operation on stderr: drawn only when stderr is a terminal (indicatif
/// hides it otherwise), cleared when done.
pub struct Progress(indicatif::ProgressBar);

impl Progress {
    /// A spinner with a message, for one long call ("purging…").
    pub fn spinner(message: impl Into<String>) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(None, draw_target());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .expect("a valid template"),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(bar)
    }

    /// A counter of items with their rate ("1,500 orders, 820/s").
    pub fn counter(unit: &'static str) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(None, draw_target());
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} {{human_pos}} {unit}, {{per_sec}} {{elapsed}}"
            ))
            .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(bar)
    }

    /// Counts one more item.
    pub fn inc(&self) {
        self.0.inc(1);
    }

    /// Removes the line.
    pub fn finish(self) {
        self.0.finish_and_clear();
    }
}

/// stderr when it is a terminal; nothing otherwise (logs and pipes stay clean).
fn draw_target() -> indicatif::ProgressDrawTarget {
    if io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    }
}

/// ER7 for the reader: one segment per line.
pub fn segments_per_line(er7: &str) -> String {
    er7.replace("\r\n", "\n").replace('\r', "\n")
}

/// A timestamp to the second (`2026-11-27T10:00:00`), or `-`.
pub fn to_seconds(utc: &str) -> &str {
    if utc.is_empty() {
        "-"
    } else {
        utc.get(..19).unwrap_or(utc)
    }
}

/// `-` for an empty value, so columns stay readable and `awk` finds every field.
pub fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
