//! HL7 v2 escape sequences, written with the message's own delimiters.
//!
//! Output: the five delimiters become `\F\ \S\ \T\ \R\ \E\`; CR and LF become `\X0D\` and
//! `\X0A\` (exact bytes, the default) or one `\.br\` per line break (formatted text).
//! Input: `\F\ \S\ \T\ \R\ \E\`, `\Xhh..\` (consecutive hex escapes are decoded together:
//! UTF-8 when the bytes are valid UTF-8, else Latin-1), `\H\`/`\N\` (highlighting) dropped, and
//! the formatted-text (FT) commands read as plain text needs them:
//! - `\.br\` ends the line (`\n`);
//! - `\.sp\`, `\.spN\`, `\.sp N\` end the line and leave N blank lines (N = 1 by default, at
//!   most 5): `a\.sp\b` is `a`, a blank line, `b`;
//! - `\.ce\` (centre the next line) ends the line: plain text has no centring;
//! - `\.in±N\`, `\.ti±N\` (indents), `\.fi\`, `\.nf\` (fill modes) are layout only and dropped;
//! - `\.skN\` (skip N columns) becomes one space.
//!
//! Anything else (`\Z..\`, `\C..\`, an unterminated escape, bad hex) is kept verbatim, so
//! nothing is lost.
//! Everything works on chars: delimiters are ASCII, so byte scanning never splits a
//! multi-byte character.

use std::borrow::Cow;

use super::Delimiters;

/// How line breaks in a value are written on output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineBreaks {
    /// `\X0D\` and `\X0A\`: byte-exact, the receiver gets back exactly what we had.
    #[default]
    Hex,
    /// `\.br\` per line break (CRLF, CR or LF): formatted-text (FT) style. With `.` as
    /// the escape character `..br.` cannot be read back (the escape closes at once), so
    /// line breaks are written as hex then.
    Br,
}

/// The bytes [`escape_into`] rewrites (the delimiters, CR and LF), as a set of 256 bits:
/// one test per byte instead of seven comparisons.
#[derive(Clone, Copy)]
struct ByteSet([u128; 2]);

impl ByteSet {
    fn special(d: &Delimiters) -> ByteSet {
        let mut set = ByteSet([0; 2]);
        for b in [
            d.field,
            d.component,
            d.repetition,
            d.escape,
            d.subcomponent,
            b'\r',
            b'\n',
        ] {
            set.0[usize::from(b >> 7)] |= 1 << (b & 127);
        }
        set
    }

    fn has(self, b: u8) -> bool {
        (self.0[usize::from(b >> 7)] >> (b & 127)) & 1 == 1
    }
}

/// Appends `value` to `out` with every delimiter and line break escaped.
pub fn escape_into(out: &mut String, value: &str, d: &Delimiters, breaks: LineBreaks) {
    let special = ByteSet::special(d);
    let needs = |b: u8| special.has(b);
    if !value.bytes().any(needs) {
        out.push_str(value);
        return;
    }
    let e = d.escape as char;
    let bytes = value.as_bytes();
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !needs(b) {
            i += 1;
            continue;
        }
        // Only ASCII bytes reach here, so `last..i` is always on char boundaries.
        out.push_str(&value[last..i]);
        let code = if b == d.field {
            "F"
        } else if b == d.component {
            "S"
        } else if b == d.subcomponent {
            "T"
        } else if b == d.repetition {
            "R"
        } else if b == d.escape {
            "E"
        } else if breaks == LineBreaks::Br && d.escape != b'.' {
            // CRLF is one break, not two.
            if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            ".br"
        } else if b == b'\r' {
            "X0D"
        } else {
            "X0A"
        };
        out.push(e);
        out.push_str(code);
        out.push(e);
        i += 1;
        last = i;
    }
    out.push_str(&value[last..]);
}

/// Characters `c` takes once written by [`escape`]: 3 for a delimiter (`\F\`), 5 for CR
/// or LF (`\X0D\`), else 1.
pub fn escaped_width(c: char, d: &Delimiters) -> usize {
    match c {
        '\r' | '\n' => 5,
        c if c.is_ascii() && ByteSet::special(d).has(c as u8) => 3,
        _ => 1,
    }
}

/// `value` with every delimiter and line break escaped (CR/LF as hex).
pub fn escape<'a>(value: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let mut out = String::new();
    escape_into(&mut out, value, d, LineBreaks::Hex);
    if out.len() == value.len() && out == value {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(out)
    }
}

/// `raw` with escape sequences undone; borrows when there is nothing to undo.
pub fn unescape<'a>(raw: &'a str, d: &Delimiters) -> Cow<'a, str> {
    if !raw.as_bytes().contains(&d.escape) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    unescape_into(&mut out, raw, d);
    Cow::Owned(out)
}

/// Appends `raw` with escape sequences undone to `out`.
pub fn unescape_into(out: &mut String, raw: &str, d: &Delimiters) {
    let bytes = raw.as_bytes();
    let esc = d.escape;
    // Bytes of consecutive `\Xhh\` escapes, decoded together so that a UTF-8 character
    // written as several hex escapes comes back whole.
    let mut hex: Vec<u8> = Vec::new();
    let mut i = 0;
    let mut last = 0;
    while i < bytes.len() {
        match memchr::memchr(esc, &bytes[i..]) {
            Some(p) => i += p,
            None => break,
        }
        let Some(len) = memchr::memchr(esc, &bytes[i + 1..]) else {
            // Unterminated: keep the rest verbatim.
            break;
        };
        let body = &raw[i + 1..i + 1 + len];
        let end = i + 1 + len + 1;
        let decoded: Option<Decoded> = decode_body(body, d);
        match decoded {
            Some(Decoded::Hex(bytes_)) => {
                if hex.is_empty() {
                    out.push_str(&raw[last..i]);
                } else if last != i {
                    flush_hex(out, &mut hex);
                    out.push_str(&raw[last..i]);
                }
                hex.extend_from_slice(&bytes_);
            }
            Some(other) => {
                flush_hex(out, &mut hex);
                out.push_str(&raw[last..i]);
                match other {
                    Decoded::Char(c) => out.push(c),
                    Decoded::Newlines(n) => (0..n).for_each(|_| out.push('\n')),
                    Decoded::BlankLines(n) => {
                        // End the current line unless it is already ended, then the blanks.
                        let ended = out.is_empty() || out.ends_with('\n');
                        (0..n + usize::from(!ended)).for_each(|_| out.push('\n'));
                    }
                    Decoded::Nothing => {}
                    Decoded::Hex(_) => unreachable!("handled above"),
                }
            }
            None => {
                // Unknown sequence: keep it as written, escape characters included.
                flush_hex(out, &mut hex);
                out.push_str(&raw[last..end]);
            }
        }
        i = end;
        last = end;
    }
    flush_hex(out, &mut hex);
    out.push_str(&raw[last..]);
}

enum Decoded {
    Char(char),
    Hex(Vec<u8>),
    Newlines(usize),
    /// `\.sp N\`: end the line, then N blank lines.
    BlankLines(usize),
    Nothing,
}

/// Most line breaks one `\.spN\` stands for.
const MAX_SP_LINES: usize = 5;

fn decode_body(body: &str, d: &Delimiters) -> Option<Decoded> {
    Some(match body {
        "F" => Decoded::Char(d.field as char),
        "S" => Decoded::Char(d.component as char),
        "T" => Decoded::Char(d.subcomponent as char),
        "R" => Decoded::Char(d.repetition as char),
        "E" => Decoded::Char(d.escape as char),
        ".br" => Decoded::Newlines(1),
        ".ce" => Decoded::BlankLines(0),
        ".sp" => Decoded::BlankLines(1),
        ".fi" | ".nf" => Decoded::Nothing,
        "H" | "N" => Decoded::Nothing,
        _ => {
            if let Some(n) = body.strip_prefix(".sp") {
                let n: usize = formatting_number(n)?;
                // At most 5: `\.spN\` is at least 6 bytes and gives at most N + 1 line breaks,
                // so unescaping never makes a value longer than it came (a frame of `\.sp99\`
                // once grew fourteenfold).
                return Some(Decoded::BlankLines(n.min(MAX_SP_LINES)));
            }
            if let Some(n) = body
                .strip_prefix(".in")
                .or_else(|| body.strip_prefix(".ti"))
            {
                // Indents only move text sideways: plain text drops them.
                return (n.trim().is_empty() || formatting_number(n).is_some())
                    .then_some(Decoded::Nothing);
            }
            if let Some(n) = body.strip_prefix(".sk") {
                return (n.trim().is_empty() || formatting_number(n).is_some())
                    .then_some(Decoded::Char(' '));
            }
            let h = body.strip_prefix('X')?;
            if h.is_empty() || h.len() % 2 != 0 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let bytes = (0..h.len())
                .step_by(2)
                .map(|k| u8::from_str_radix(&h[k..k + 2], 16).expect("checked hex digits"))
                .collect();
            Decoded::Hex(bytes)
        }
    })
}

/// The number of a formatting command (`.sp 2`, `.in+4`, `.ti-2`): sign and spaces allowed.
fn formatting_number(s: &str) -> Option<usize> {
    let t = s.trim().trim_start_matches(['+', '-']).trim_start();
    t.parse().ok()
}

fn flush_hex(out: &mut String, hex: &mut Vec<u8>) {
    if hex.is_empty() {
        return;
    }
    match std::str::from_utf8(hex) {
        Ok(s) => out.push_str(s),
        // Not UTF-8: read as Latin-1, where every byte is the code point of the same value.
        Err(_) => out.extend(hex.iter().map(|&b| b as char)),
    }
    hex.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Delimiters {
        Delimiters::default()
    }

    #[test]
    fn escapes_every_delimiter_and_line_breaks() {
        assert_eq!(
            escape("a|b^c&d~e\\f", &d()),
            "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
        );
        assert_eq!(escape("x\r\ny", &d()), "x\\X0D\\\\X0A\\y");
        let mut s = String::new();
        escape_into(&mut s, "x\r\ny\nz", &d(), LineBreaks::Br);
        assert_eq!(s, "x\\.br\\y\\.br\\z");
        assert!(matches!(escape("plain", &d()), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_width_counts_what_escape_writes() {
        let other = Delimiters {
            field: b'#',
            component: b'!',
            repetition: b'@',
            escape: b'$',
            subcomponent: b'%',
        };
        for d in [d(), other] {
            for s in ["a|b^c&d~e\\f", "x\r\ny#!@$%", "Müller ñ — ok", "", "\\\\"] {
                let widths: usize = s.chars().map(|c| escaped_width(c, &d)).sum();
                assert_eq!(widths, escape(s, &d).chars().count(), "{s:?}");
            }
        }
        // Bytes above ASCII are never special, whatever the delimiters.
        let mut out = String::new();
        escape_into(&mut out, "é|ÿ", &d(), LineBreaks::Hex);
        assert_eq!(out, "é\\F\\ÿ");
    }

    #[test]
    fn unescape_is_char_correct_on_unicode() {
        // hl7-parser 0.3 gets these wrong or panics (see stack-notes).
        assert_eq!(
            unescape("Müller \\T\\ Söhne \\F\\ x", &d()),
            "Müller & Söhne | x"
        );
        assert_eq!(unescape("ÄÖÜ\\F\\", &d()), "ÄÖÜ|");
    }

    #[test]
    fn unescape_hex_utf8_and_latin1() {
        assert_eq!(unescape("OPERA\\XC7\\\\XC3\\O", &d()), "OPERAÇÃO");
        assert_eq!(unescape("caf\\XC3A9\\", &d()), "café");
        assert_eq!(unescape("caf\\XC3\\\\XA9\\", &d()), "café");
        assert_eq!(unescape("a\\X0D\\\\X0A\\b", &d()), "a\r\nb");
    }

    #[test]
    fn unescape_formatting_and_unknown() {
        assert_eq!(
            unescape("some text\\.br\\after \\H\\new\\N\\\\.br\\end", &d()),
            "some text\nafter new\nend"
        );
        // `.sp N`: the line ends, then N blank lines.
        assert_eq!(unescape("a\\.sp2\\b", &d()), "a\n\n\nb");
        assert_eq!(unescape("a\\.sp 2\\b", &d()), "a\n\n\nb");
        assert_eq!(unescape("a\\.sp\\b", &d()), "a\n\nb");
        assert_eq!(unescape("a\\.br\\\\.sp\\b", &d()), "a\n\nb");
        // Never longer than the input: no escape expands.
        let bomb = "\\.sp99\\".repeat(1000);
        assert!(unescape(&bomb, &d()).len() <= bomb.len());
        assert_eq!(unescape("keep \\Zxyz\\ this", &d()), "keep \\Zxyz\\ this");
        assert_eq!(unescape("bad \\XZZ\\ hex", &d()), "bad \\XZZ\\ hex");
        assert_eq!(unescape("open \\F", &d()), "open \\F");
    }

    #[test]
    fn formatted_text_layout_commands_are_read_as_plain_text() {
        assert_eq!(
            unescape("\\.in+4\\Indented\\.br\\\\.ti-2\\Hanging\\.in0\\", &d()),
            "Indented\nHanging"
        );
        assert_eq!(unescape("\\.ce\\TITLE\\.br\\body", &d()), "TITLE\nbody");
        assert_eq!(unescape("a\\.ce\\b", &d()), "a\nb");
        assert_eq!(unescape("\\.nf\\x\\.fi\\", &d()), "x");
        assert_eq!(unescape("a\\.sk3\\b", &d()), "a b");
        // A command with a malformed number stays as written.
        assert_eq!(unescape("a\\.in+x\\b", &d()), "a\\.in+x\\b");
    }

    #[test]
    fn br_with_a_dot_escape_character_falls_back_to_hex() {
        // Found by tests/it/properties.rs: `..br.` read back as itself, not a line break.
        let d = Delimiters::from_msh(b'"', b"'*.&").unwrap();
        let mut s = String::new();
        escape_into(&mut s, "a\r\nb", &d, LineBreaks::Br);
        assert_eq!(s, "a.X0D..X0A.b");
        assert_eq!(unescape(&s, &d), "a\r\nb");
    }

    #[test]
    fn custom_delimiters() {
        let d = Delimiters::from_msh(b'#', b"$%!*").unwrap();
        assert_eq!(escape("a#b$c", &d), "a!F!b!S!c");
        assert_eq!(unescape("a!F!b!S!c!E!", &d), "a#b$c!");
    }

    #[test]
    fn round_trip_many_strings() {
        // Deterministic pseudo-random strings over an alphabet rich in delimiters,
        // line breaks and multi-byte characters.
        let alphabet: Vec<char> = "ab |^~\\&\r\nÄö€😀 XF".chars().collect();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut s = String::new();
            let mut x = seed;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            let e = escape(&s, &d());
            assert!(!e.contains(['|', '^', '~', '&', '\r', '\n']), "{e:?}");
            assert_eq!(unescape(&e, &d()), s, "escaped as {e:?}");
        }
    }
}
