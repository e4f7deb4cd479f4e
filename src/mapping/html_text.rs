//! HTML and XHTML report text → readable plain text, for reports sent as `text/html` or
//! `application/xhtml+xml` (US Core's note profile does this).
//!
//! Parsing is html2text's (html5ever underneath: entities, malformed markup, `<script>`
//! and `<style>` dropped). What it renders is decided here: block elements and `<br>` end
//! lines, paragraphs are separated by a blank line, list items get `- ` or `1. `, table
//! cells go one per line, and nothing a reader of a radiology report would not expect
//! appears: no `#` before headings, no `*` around emphasis, no link footnotes, no wrapping,
//! no-break spaces as plain spaces.

use html2text::render::TextDecorator;

/// No line is wrapped below this many columns: reports keep their own line breaks.
const NO_WRAP: usize = 1_000_000;

/// The readable text of an HTML or XHTML document or fragment. Lines lose trailing
/// spaces, and leading and trailing blank lines are dropped.
pub fn to_plain_text(html: &str) -> Result<String, String> {
    let text = html2text::config::with_decorator(ReportText)
        .no_table_borders()
        .string_from_read(html.as_bytes(), NO_WRAP)
        .map_err(|e| format!("the HTML could not be read: {e}"))?;
    // A no-break space is layout: report text keeps plain spaces.
    let text = text.replace('\u{a0}', " ");
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    let last = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(first, |i| i + 1);
    Ok(lines[first..last].join("\n"))
}

/// Plain text decorations: list markers only.
#[derive(Clone, Copy, Debug)]
struct ReportText;

impl TextDecorator for ReportText {
    type Annotation = ();

    fn decorate_link_start(&mut self, _url: &str) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_link_end(&mut self) -> String {
        String::new()
    }
    fn decorate_em_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_em_end(&self) -> String {
        String::new()
    }
    fn decorate_strong_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strong_end(&self) -> String {
        String::new()
    }
    fn decorate_strikeout_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strikeout_end(&self) -> String {
        String::new()
    }
    fn decorate_code_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_code_end(&self) -> String {
        String::new()
    }
    fn decorate_preformat_first(&self) {}
    fn decorate_preformat_cont(&self) {}
    fn decorate_image(&mut self, _src: &str, title: &str) -> (String, ()) {
        (title.to_string(), ())
    }
    fn header_prefix(&self, _level: usize) -> String {
        String::new()
    }
    fn quote_prefix(&self) -> String {
        String::new()
    }
    fn unordered_item_prefix(&self) -> String {
        "- ".to_string()
    }
    fn ordered_item_prefix(&self, i: i64) -> String {
        format!("{i}. ")
    }
    fn make_subblock_decorator(&self) -> Self {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_lines_and_entities_are_decoded() {
        let html = r#"<div xmlns="http://www.w3.org/1999/xhtml"><h1>CT CHEST</h1>
            <style>p { color: red }</style><script>alert("x")</script>
            <p>Findings: <b>no</b> embolus &amp; no effusion; size &lt;4&nbsp;mm &#8211; ok&eacute;.</p>
            <p>Second<br/>line.</p><ul><li>one</li><li>two</li></ul><ol><li>first</li></ol>
            <a href="http://example.org/x">link text</a></div>"#;
        assert_eq!(
            to_plain_text(html).unwrap(),
            "CT CHEST\n\nFindings: no embolus & no effusion; size <4 mm – oké.\n\n\
             Second\nline.\n- one\n- two\n1. first\n\nlink text"
        );
    }

    #[test]
    fn long_lines_are_not_wrapped() {
        let long = "word ".repeat(400);
        let text = to_plain_text(&format!("<p>{long}</p>")).unwrap();
        assert_eq!(text.lines().count(), 1);
    }
}
