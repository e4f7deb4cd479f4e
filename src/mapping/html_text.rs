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

/// Deepest element nesting taken. Real reports nest a few dozen levels; html2text's time
/// grows with the square of the depth (10,000 nested `<div>` took 3 s, 100,000 over two
/// minutes, measured in release), so a hostile document is refused before it is parsed.
pub const MAX_DEPTH: usize = 500;

/// Elements that never hold others, or whose end tag may be left out (`<p>`, `<li>`…):
/// not counted as nesting, so sloppy but ordinary HTML is never refused.
const NOT_NESTING: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "thead", "tbody", "tfoot", "option",
    "optgroup", "colgroup", "caption", "rt", "rp",
];

/// An upper bound of the element nesting of `html`, from its tags alone (no parsing).
fn nesting_depth(html: &str) -> usize {
    let b = html.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while let Some(p) = memchr::memchr(b'<', &b[i..]) {
        i += p + 1;
        let closing = b.get(i) == Some(&b'/');
        let start = i + usize::from(closing);
        if b[start..].starts_with(b"!--") {
            i = match memchr::memmem::find(&b[start..], b"-->") {
                Some(e) => start + e + 3,
                None => b.len(),
            };
            continue;
        }
        let len = b[start..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        if len == 0 {
            continue;
        }
        let name = html[start..start + len].to_ascii_lowercase();
        let end = memchr::memchr(b'>', &b[start..]).map_or(b.len(), |e| start + e);
        let self_closing = end > 0 && b.get(end - 1) == Some(&b'/');
        if NOT_NESTING.contains(&name.as_str()) || self_closing {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
        } else {
            depth += 1;
            max = max.max(depth);
        }
    }
    max
}

/// The readable text of an HTML or XHTML document or fragment. Lines lose trailing
/// spaces, and leading and trailing blank lines are dropped.
pub fn to_plain_text(html: &str) -> Result<String, String> {
    let depth = nesting_depth(html);
    if depth > MAX_DEPTH {
        return Err(format!(
            "the HTML nests elements {depth} deep; at most {MAX_DEPTH} are read (send the report as text/plain)"
        ));
    }
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
    fn deep_nesting_is_refused_before_parsing() {
        let deep = "<div>".repeat(MAX_DEPTH + 1) + "x";
        let e = to_plain_text(&deep).unwrap_err();
        assert!(e.contains("501 deep"), "{e}");
        // Unclosed paragraphs and list items, comments and void elements are not nesting.
        let sloppy = "<ul>".to_string()
            + &"<li><p>item<br><img src=x/><!-- <div> -->".repeat(5000)
            + "</ul>";
        assert_eq!(nesting_depth(&sloppy), 1);
        assert!(to_plain_text(&sloppy).is_ok());
        assert_eq!(nesting_depth("<div><span>a</span><DIV>b</DIV></div>"), 2);
    }

    #[test]
    fn long_lines_are_not_wrapped() {
        let long = "word ".repeat(400);
        let text = to_plain_text(&format!("<p>{long}</p>")).unwrap();
        assert_eq!(text.lines().count(), 1);
    }
}
