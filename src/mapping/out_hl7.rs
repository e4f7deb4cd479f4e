//! An HL7 segment under construction, rendered straight into the message text.
//!
//! A segment's targets are known at load time: its cells are sorted by position, and a
//! constant the lowering could escape is already text. Rules fill the other cells with
//! references to their values; rendering walks the cells once, writes the delimiters up to
//! each position and escapes each value into the message buffer. Empty cells write nothing,
//! which trims trailing empty fields, components and repetitions. Repetitions made by a
//! rule-level `for_each` (`PID-3[*].1`) have no fixed cell and are merged in by position.

use std::borrow::Cow;

use super::plan::{CellInit, ExprId, Pos4};
use crate::hl7::Delimiters;
use crate::hl7::escape::{LineBreaks, escape_into};

/// What a cell holds.
#[derive(Debug, Clone)]
pub enum Cell<'a> {
    /// Nothing.
    Empty,
    /// Text already escaped (a constant, or a generated MSH field).
    Escaped(&'a str),
    /// The value of an expression (still kept by the evaluator when rendering).
    Expr(ExprId),
    /// A value that had to be copied (written from inside a repeat).
    Text(Cow<'a, str>),
    /// MSH-7.
    Now,
    /// MSH-10.
    ControlId,
}

/// The cells of the segment being written.
#[derive(Debug, Default)]
pub struct Cells<'a> {
    /// One per static position of the segment, with the order it was written in.
    pub cells: Vec<(Cell<'a>, u32)>,
    /// Values at positions known only at run time (`[*]` repetitions), with their order.
    pub extra: Vec<(Pos4, Cow<'a, str>, u32)>,
    /// Write counter, so that the later of two writes to one position wins.
    pub seq: u32,
}

impl<'a> Cells<'a> {
    /// Resets the cells to a segment's initial content.
    pub fn reset(&mut self, init: &'a [CellInit]) {
        self.cells.clear();
        self.cells.extend(init.iter().map(|i| {
            (
                match i {
                    CellInit::Empty => Cell::Empty,
                    CellInit::Text(t) => Cell::Escaped(t),
                    CellInit::Now => Cell::Now,
                    CellInit::ControlId => Cell::ControlId,
                },
                0,
            )
        }));
        self.extra.clear();
        self.seq = 0;
    }

    /// Sets cell `i`.
    pub fn set(&mut self, i: u16, cell: Cell<'a>) {
        self.seq += 1;
        self.cells[usize::from(i)] = (cell, self.seq);
    }

    /// Adds a value at a run-time position.
    pub fn set_extra(&mut self, p: Pos4, v: Cow<'a, str>) {
        self.seq += 1;
        self.extra.push((p, v, self.seq));
    }
}

/// Message-level values the cells refer to.
pub struct Render<'r> {
    /// Delimiters.
    pub delimiters: Delimiters,
    /// Line breaks in values.
    pub line_breaks: LineBreaks,
    /// MSH-7, already formatted.
    pub now: &'r str,
    /// MSH-10.
    pub control_id: &'r str,
}

/// Appends segment `id` with `cells` (at `positions`) to `out`, followed by CR; `value`
/// gives the text of an expression cell.
pub fn render<'a, 'v>(
    out: &mut String,
    id: &str,
    positions: &[Pos4],
    cells: &mut Cells<'a>,
    r: &Render<'_>,
    value: &dyn Fn(ExprId) -> Option<&'v str>,
) {
    let d = r.delimiters;
    out.push_str(id);
    // (field, repetition, component, sub-component) written so far.
    let mut cur = (0u16, 1u16, 1u16, 1u16);
    if id == "MSH" {
        // MSH-1 and MSH-2 are the delimiters themselves, never values.
        out.push(d.field as char);
        out.push_str(&d.encoding_characters());
        cur.0 = 2;
    }
    let mut extra = std::mem::take(&mut cells.extra);
    extra.sort_by_key(|e| (e.0, e.2));
    let mut ei = 0;
    let mut write = |out: &mut String, p: Pos4, text: &str, escaped: bool| {
        if p.field > cur.0 {
            push_n(out, d.field, p.field - cur.0);
            cur = (p.field, 1, 1, 1);
        }
        if p.rep > cur.1 {
            push_n(out, d.repetition, p.rep - cur.1);
            cur = (p.field, p.rep, 1, 1);
        }
        if p.comp > cur.2 {
            push_n(out, d.component, p.comp - cur.2);
            cur = (p.field, p.rep, p.comp, 1);
        }
        if p.sub > cur.3 {
            push_n(out, d.subcomponent, p.sub - cur.3);
            cur.3 = p.sub;
        }
        if escaped {
            out.push_str(text);
        } else {
            escape_into(out, text, &d, r.line_breaks);
        }
    };
    for (i, (cell, seq)) in cells.cells.iter().enumerate() {
        let p = positions[i];
        // Run-time positions before this one; one at the same position wins if later.
        let mut overridden = false;
        while ei < extra.len() && extra[ei].0 <= p {
            let (ep, ev, es) = &extra[ei];
            // The last write to a run-time position wins among equals.
            let last_of_pos = extra.get(ei + 1).is_none_or(|n| n.0 != *ep);
            if last_of_pos {
                if *ep == p && *es < *seq {
                    // The static cell was written later: it wins.
                } else {
                    if *ep == p {
                        overridden = true;
                    }
                    if !ev.is_empty() {
                        write(out, *ep, ev, false);
                    }
                }
            }
            ei += 1;
        }
        if overridden {
            continue;
        }
        match cell {
            Cell::Empty => {}
            Cell::Escaped(t) => write(out, p, t, true),
            Cell::Expr(x) => {
                if let Some(t) = value(*x) {
                    write(out, p, t, false);
                }
            }
            Cell::Text(t) => write(out, p, t, false),
            Cell::Now => write(out, p, r.now, true),
            Cell::ControlId => write(out, p, r.control_id, false),
        }
    }
    while ei < extra.len() {
        let (ep, ev, _) = &extra[ei];
        let last_of_pos = extra.get(ei + 1).is_none_or(|n| n.0 != *ep);
        if last_of_pos && !ev.is_empty() {
            write(out, *ep, ev, false);
        }
        ei += 1;
    }
    out.push('\r');
    cells.extra = extra;
}

fn push_n(out: &mut String, c: u8, n: u16) {
    for _ in 0..n {
        out.push(c as char);
    }
}
