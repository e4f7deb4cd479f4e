//! HL7 v2 in ER7 (pipe-and-hat) form: escaping, a lazy zero-copy reader and a writer.
//!
//! Which path does what, and why:
//! - [`charset`] turns the bytes received into text (UTF-8, MSH-18, else Windows-1252 with
//!   a warning) before anything else reads them.
//! - [`er7::Message`] is the hot path for inbound messages (ORU^R01 → report). It indexes
//!   segment boundaries once and answers field queries by scanning only the segment asked
//!   about, borrowing from the input. hl7-parser 0.3 builds a full tree per message
//!   (~7k msg/s measured, see stack-notes) and silently truncates on wrapped lines, so it is
//!   not used here.
//! - [`escape`] does escaping and unescaping itself: hl7-parser's `decode` mixes byte and
//!   char positions on non-ASCII text.
//! - [`writer`] renders outbound messages (ORM^O01) with automatic escaping and builds MSH.
//!   [`writer::check_with_hl7_parser`] re-parses what we emit with hl7-parser, as an
//!   independent check before a message leaves.

pub mod ack;
pub mod charset;
pub mod er7;
pub mod escape;
pub mod writer;

/// The five delimiters of an ER7 message, read from MSH-1 and MSH-2.
///
/// All are single ASCII bytes: that lets the reader split on bytes without ever landing
/// inside a multi-byte UTF-8 character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), normally `|`.
    pub field: u8,
    /// Component separator, normally `^`.
    pub component: u8,
    /// Repetition separator, normally `~`.
    pub repetition: u8,
    /// Escape character, normally `\`.
    pub escape: u8,
    /// Sub-component separator, normally `&`.
    pub subcomponent: u8,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
        }
    }
}

impl Delimiters {
    /// MSH-2 as written in a message: component, repetition, escape, sub-component.
    pub fn encoding_characters(&self) -> String {
        [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .iter()
        .map(|&b| b as char)
        .collect()
    }

    /// Reads MSH-1 and MSH-2; `None` when they are not five distinct printable ASCII
    /// punctuation characters.
    pub fn from_msh(field: u8, encoding: &[u8]) -> Option<Delimiters> {
        // 2.7 adds a fifth encoding character (truncation, `#`); we accept and ignore it.
        if !(encoding.len() == 4 || encoding.len() == 5) {
            return None;
        }
        let d = Delimiters {
            field,
            component: encoding[0],
            repetition: encoding[1],
            escape: encoding[2],
            subcomponent: encoding[3],
        };
        let all = [d.field, d.component, d.repetition, d.escape, d.subcomponent];
        for (i, &b) in all.iter().enumerate() {
            if !b.is_ascii_punctuation() || all[..i].contains(&b) {
                return None;
            }
        }
        Some(d)
    }
}
