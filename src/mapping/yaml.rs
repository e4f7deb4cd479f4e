//! A YAML document as a tree of nodes that keep their source position.
//!
//! serde-saphyr does the parsing (with its limits on depth, node count and alias expansion,
//! which refuse alias bombs and deep nesting); we deserialize into this generic tree with
//! `Spanned` values, then [`super::spec`] reads the tree by hand so that it can report every
//! problem of a file at once, each with its own line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based position in a mapping file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Line (1-based).
    pub line: u32,
    /// Column (1-based).
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub pos: Pos,
    /// The value.
    pub kind: Kind,
}

/// The shape of a YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// Any number, kept as written by serde (integer or float).
    Number(String),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping; keys are strings (with their own positions), order kept.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The value as text when it is a scalar (string, number, bool).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.kind {
            Kind::Str(s) | Kind::Number(s) => Some(s.clone()),
            Kind::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The string value, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks up `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(m) => m
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short name of the node's type for messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// Deepest nesting accepted in a mapping or table file.
pub const MAX_DEPTH: usize = 24;

/// Parses YAML text into a node tree; the error carries the position when known.
pub fn parse(text: &str) -> Result<Node, (Pos, String)> {
    // Mapping files nest a handful of levels. serde-saphyr's default depth limit (64) is
    // more than the recursive deserialization into `Raw` can take on a 2 MiB stack (the
    // blocking-pool thread that reloads mappings) in a debug build: 50 levels overflowed it.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: MAX_DEPTH },
    };
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(s) => Ok(convert(s)),
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line() as u32,
                    column: l.column() as u32,
                })
                .unwrap_or(Pos { line: 1, column: 1 });
            // The first line of the rendered error is the message; the rest is a snippet
            // of the file.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid YAML");
            Err((pos, readable(first)))
        }
    }
}

/// The reader's message in the project's words: its position prefix and advice meant for
/// programmers ("set DuplicateKeyPolicy in Options") are dropped, the common problems get a
/// sentence an analyst can act on, and anything else a generic one (the position and the
/// hint still point at the spot).
fn readable(message: &str) -> String {
    // `error: line 2 column 1: duplicate mapping key: x, set DuplicateKeyPolicy ...`
    let mut m = message.trim();
    m = m.strip_prefix("error:").unwrap_or(m).trim_start();
    if let Some(rest) = m.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
    {
        m = after;
    }
    if let Some((_, breach)) = m.split_once("budget breached: ") {
        let what = breach.split([' ', '{']).next().unwrap_or_default();
        return match what {
            "Depth" => format!("nested more than {MAX_DEPTH} levels deep"),
            "Nodes" | "Events" => {
                "more than 250000 YAML nodes: an alias bomb, or far larger than a mapping file"
                    .into()
            }
            "Aliases"
            | "Anchors"
            | "AliasAnchorRatio"
            | "RecordedAnchorBytes"
            | "RecordedAnchorEvents" => "too many aliases or anchors: an alias bomb?".into(),
            _ => "beyond a limit of the YAML reader (far larger than a mapping file)".into(),
        };
    }
    if m.contains("recursion limit exceeded") {
        return "nested too deeply (YAML reader limit)".into();
    }
    if let Some(rest) = m.strip_prefix("duplicate mapping key:") {
        let key = rest.split(',').next().unwrap_or_default().trim();
        return format!("key `{key}` appears twice in the same mapping");
    }
    let known: &[(&str, &str)] = &[
        (
            "mapping values are not allowed",
            "a `key: value` where it cannot start (check the indentation of this line)",
        ),
        (
            "tabs disallowed",
            "a tab in the indentation: YAML indents with spaces",
        ),
        ("tab", "a tab where YAML allows none: indent with spaces"),
        (
            "unknown anchor",
            "an alias (`*name`) without an anchor (`&name`) before it",
        ),
        ("unclosed quote", "a quoted text is not closed"),
        (
            "quoted scalar",
            "a quoted text is not closed or holds an invalid escape",
        ),
        (
            "did not find expected '-'",
            "a list item without `- ` where the list continues",
        ),
        (
            "did not find expected ','",
            "a `[...]` or `{...}` list is not closed, or lacks a `,`",
        ),
        ("did not find expected ']'", "a `[...]` list is not closed"),
        (
            "did not find expected '}'",
            "a `{...}` mapping is not closed",
        ),
        (
            "did not find expected key",
            "the indentation does not match the keys above",
        ),
        (
            "did not find expected node content",
            "a value is missing here",
        ),
        (
            "cannot start any token",
            "a character that cannot start a value here (quote the value)",
        ),
        ("unexpected end", "the file ends in the middle of a value"),
        (
            "invalid indentation",
            "the indentation does not match the lines above",
        ),
        ("could not find expected ':'", "a key without `:`"),
        ("invalid leading UTF-8", "not valid UTF-8"),
        ("byte order mark", "a byte-order mark where none is allowed"),
    ];
    for (needle, said) in known {
        if m.contains(needle) {
            return (*said).to_string();
        }
    }
    "not valid YAML here".into()
}

/// What serde-saphyr fills in; converted to [`Node`] afterwards.
enum Raw {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

fn convert(s: Spanned<Raw>) -> Node {
    let pos = Pos {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    };
    let kind = match s.value {
        Raw::Null => Kind::Null,
        Raw::Bool(b) => Kind::Bool(b),
        Raw::Number(n) => Kind::Number(n),
        Raw::Str(s) => Kind::Str(s),
        Raw::Seq(v) => Kind::Seq(v.into_iter().map(convert).collect()),
        Raw::Map(v) => Kind::Map(
            v.into_iter()
                .map(|(k, v)| (convert(k), convert(v)))
                .collect(),
        ),
    };
    Node { pos, kind }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Number(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Number(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Number(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = a.next_element::<Spanned<Raw>>()? {
            v.push(x);
        }
        Ok(Raw::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
        let mut v = Vec::new();
        while let Some((k, val)) = a.next_entry::<Spanned<Raw>, Spanned<Raw>>()? {
            v.push((k, val));
        }
        Ok(Raw::Map(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_kept() {
        let n = parse("a: 1\nb:\n  - x\n  - {c: true}\n").unwrap();
        let b = n.get("b").unwrap();
        let Kind::Seq(items) = &b.kind else { panic!() };
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
        assert_eq!(items[0].as_str(), Some("x"));
        let c = items[1].get("c").unwrap();
        assert_eq!(c.kind, Kind::Bool(true));
        assert_eq!(c.pos.line, 4);
        assert_eq!(n.get("a").unwrap().kind, Kind::Number("1".into()));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let (pos, msg) = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(pos.line >= 1, "{msg}");
    }

    #[test]
    fn reader_messages_are_in_our_words() {
        for (text, want) in [
            ("mapping: a\nmapping: b\n", "key `mapping` appears twice"),
            ("mapping: c\n  input: order\n", "cannot start"),
            ("rules:\n\t- x\n", "tab"),
            ("a: &x 1\nb: *y\n", "without an anchor"),
            ("a: \"unterminated\n", "not closed"),
            ("- a\nb: 1\n", "list item"),
        ] {
            let (pos, m) = parse(text).unwrap_err();
            assert!(m.contains(want), "{text:?}: {m}");
            assert!(
                !m.contains("Options") && !m.contains("line ") && !m.starts_with("error"),
                "{m}"
            );
            assert!(pos.line >= 1);
        }
    }

    #[test]
    fn alias_bomb_refused() {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            y.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&y).is_err());
        let deep = "[".repeat(500) + &"]".repeat(500);
        assert!(parse(&deep).is_err());
    }
}
