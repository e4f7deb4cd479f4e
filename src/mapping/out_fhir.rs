//! A FHIR resource under construction, written as JSON text at the end.
//!
//! Nodes live in one vector and are linked by index; element names are the plan's interned
//! names, so finding a child compares integers. An object's keys keep the order they were
//! first written in; an array's items are ordered by index, and an index nothing was
//! written to leaves no hole (`given[1]` alone becomes the first given name). Only written
//! values create nodes, so an object or array is never empty.
//!
//! The text is written directly (no `serde_json::Value` in between), escaped as serde_json
//! escapes strings, so the output is byte for byte what serializing the same tree with
//! serde_json gives.

use std::borrow::Cow;

use super::plan::FStep;

const NONE: u32 = u32::MAX;

/// A leaf value.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf<'a> {
    /// A JSON string.
    Str(Cow<'a, str>),
    /// A JSON boolean.
    Bool(bool),
    /// A JSON number, as it is to be written.
    Num(String),
}

#[derive(Debug, Clone)]
enum Kind<'a> {
    Obj,
    Arr,
    Leaf(Leaf<'a>),
}

#[derive(Debug, Clone)]
struct Node<'a> {
    /// Interned name (objects' children) or index (arrays' children).
    key: u32,
    kind: Kind<'a>,
    first: u32,
    next: u32,
    /// Arrays: one past the largest index written.
    len: u32,
}

/// The tree.
#[derive(Debug, Clone)]
pub struct Tree<'a> {
    nodes: Vec<Node<'a>>,
}

/// Interned name of `resourceType` (the plan interns it first).
pub const RESOURCE_TYPE: u16 = 0;
/// Interned name of `id`.
pub const ID: u16 = 1;
/// Interned name of `contained`.
pub const CONTAINED: u16 = 2;

impl<'a> Tree<'a> {
    /// A tree whose root (node 0) is an empty object.
    pub fn new() -> Tree<'a> {
        let mut t = Tree {
            nodes: Vec::with_capacity(96),
        };
        t.push(0, Kind::Obj);
        t
    }

    fn push(&mut self, key: u32, kind: Kind<'a>) -> u32 {
        self.nodes.push(Node {
            key,
            kind,
            first: NONE,
            next: NONE,
            len: 0,
        });
        (self.nodes.len() - 1) as u32
    }

    /// A new object not attached anywhere (a contained resource being built).
    pub fn detached_object(&mut self) -> u32 {
        self.push(0, Kind::Obj)
    }

    /// Number of children of `node`.
    pub fn children(&self, node: u32) -> usize {
        let mut n = 0;
        let mut c = self.nodes[node as usize].first;
        while c != NONE {
            n += 1;
            c = self.nodes[c as usize].next;
        }
        n
    }

    /// The child of object `node` named `key`, created (last) when missing.
    fn child_key(&mut self, node: u32, key: u16, kind: fn() -> Kind<'a>) -> u32 {
        let key = u32::from(key);
        let mut c = self.nodes[node as usize].first;
        let mut last = NONE;
        while c != NONE {
            if self.nodes[c as usize].key == key {
                return c;
            }
            last = c;
            c = self.nodes[c as usize].next;
        }
        let n = self.push(key, kind());
        if last == NONE {
            self.nodes[node as usize].first = n;
        } else {
            self.nodes[last as usize].next = n;
        }
        n
    }

    /// The item `index` of array `node`, created in index order when missing.
    fn child_index(&mut self, node: u32, index: u32, kind: fn() -> Kind<'a>) -> u32 {
        let mut c = self.nodes[node as usize].first;
        let mut prev = NONE;
        while c != NONE && self.nodes[c as usize].key < index {
            prev = c;
            c = self.nodes[c as usize].next;
        }
        if c != NONE && self.nodes[c as usize].key == index {
            return c;
        }
        let n = self.push(index, kind());
        self.nodes[n as usize].next = c;
        if prev == NONE {
            self.nodes[node as usize].first = n;
        } else {
            self.nodes[prev as usize].next = n;
        }
        let len = &mut self.nodes[node as usize].len;
        *len = (*len).max(index + 1);
        n
    }

    /// Appends `child` (built detached) to the array named `key` of object `node`.
    pub fn append(&mut self, node: u32, key: u16, child: u32) {
        let arr = self.child_key(node, key, || Kind::Arr);
        let index = self.nodes[arr as usize].len;
        // Splice the detached node in as item `index`.
        self.nodes[child as usize].key = index;
        let mut c = self.nodes[arr as usize].first;
        if c == NONE {
            self.nodes[arr as usize].first = child;
        } else {
            while self.nodes[c as usize].next != NONE {
                c = self.nodes[c as usize].next;
            }
            self.nodes[c as usize].next = child;
        }
        self.nodes[arr as usize].len = index + 1;
    }

    /// Writes `leaf` at `steps` below `base`; `each` holds the index `[*]` stands for at
    /// each level of FHIR `for_each`.
    pub fn write(&mut self, base: u32, steps: &[FStep], each: &[usize], leaf: Leaf<'a>) {
        let mut cur = base;
        for (i, st) in steps.iter().enumerate() {
            let last = i + 1 == steps.len();
            let kind: fn() -> Kind<'a> = if last {
                || Kind::Leaf(Leaf::Bool(false))
            } else {
                match steps[i + 1] {
                    FStep::Key(_) => || Kind::Obj,
                    FStep::Index(_) | FStep::Each(_) => || Kind::Arr,
                }
            };
            cur = match *st {
                FStep::Key(k) => self.child_key(cur, k, kind),
                FStep::Index(n) => self.child_index(cur, n, kind),
                FStep::Each(level) => {
                    let n = each.get(usize::from(level)).copied().unwrap_or(0) as u32;
                    self.child_index(cur, n, kind)
                }
            };
        }
        self.nodes[cur as usize].kind = Kind::Leaf(leaf);
    }

    /// Length of the array at `steps` below `base` (one past its largest index; 0 when
    /// absent), for appending `for_each` items after what earlier rules wrote.
    pub fn array_len(&self, base: u32, steps: &[FStep], each: &[usize]) -> usize {
        let mut cur = base;
        for st in steps {
            let want = match *st {
                FStep::Key(k) => u32::from(k),
                FStep::Index(n) => n,
                FStep::Each(level) => each.get(usize::from(level)).copied().unwrap_or(0) as u32,
            };
            let mut c = self.nodes[cur as usize].first;
            while c != NONE && self.nodes[c as usize].key != want {
                c = self.nodes[c as usize].next;
            }
            if c == NONE {
                return 0;
            }
            cur = c;
        }
        match self.nodes[cur as usize].kind {
            Kind::Arr => self.nodes[cur as usize].len as usize,
            _ => 0,
        }
    }

    /// The JSON text of the tree, compact; `names` are the interned element names.
    pub fn to_json(&self, names: &[Box<str>], capacity: usize) -> String {
        let mut out = String::with_capacity(capacity);
        self.write_node(0, names, &mut out);
        out
    }

    fn write_node(&self, n: u32, names: &[Box<str>], out: &mut String) {
        let node = &self.nodes[n as usize];
        match &node.kind {
            Kind::Obj => {
                out.push('{');
                let mut c = node.first;
                let mut first = true;
                while c != NONE {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    json_string(out, &names[self.nodes[c as usize].key as usize]);
                    out.push(':');
                    self.write_node(c, names, out);
                    c = self.nodes[c as usize].next;
                }
                out.push('}');
            }
            Kind::Arr => {
                out.push('[');
                let mut c = node.first;
                let mut first = true;
                while c != NONE {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    self.write_node(c, names, out);
                    c = self.nodes[c as usize].next;
                }
                out.push(']');
            }
            Kind::Leaf(Leaf::Str(s)) => json_string(out, s),
            Kind::Leaf(Leaf::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
            Kind::Leaf(Leaf::Num(n)) => out.push_str(n),
        }
    }
}

impl Default for Tree<'_> {
    fn default() -> Self {
        Tree::new()
    }
}

/// Bytes a JSON string cannot hold as they are: `"`, `\\` and the control characters.
/// One table load per byte decides; the escaping match runs only for these.
pub(super) const JSON_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes: `"` and `\`,
/// `\b \f \n \r \t`, other control characters as `\u00XX` (lower-case hex); everything
/// else, non-ASCII included, as it is.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !JSON_SPECIAL[usize::from(b)] {
            continue;
        }
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            // The other control characters: JSON_SPECIAL lets no other byte through.
            _ => "",
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<Box<str>> {
        ["resourceType", "id", "contained", "name", "given", "text"]
            .iter()
            .map(|s| Box::from(*s))
            .collect()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for s in [
            "plain",
            "quote \" and \\ back",
            "tab\tnl\ncr\r\u{8}\u{c}",
            "\u{1}\u{1f}\u{7f}",
            "Māui 😀 </script>",
        ] {
            let mut out = String::new();
            json_string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn keys_in_first_written_order_and_arrays_without_holes() {
        let mut t = Tree::new();
        let given1 = [
            FStep::Key(3),
            FStep::Index(0),
            FStep::Key(4),
            FStep::Index(1),
        ];
        t.write(0, &[FStep::Key(0)], &[], Leaf::Str("Patient".into()));
        t.write(0, &given1, &[], Leaf::Str("Mary".into()));
        t.write(
            0,
            &[FStep::Key(3), FStep::Index(0), FStep::Key(5)],
            &[],
            Leaf::Str("Jane Mary".into()),
        );
        assert_eq!(
            t.to_json(&names(), 0),
            r#"{"resourceType":"Patient","name":[{"given":["Mary"],"text":"Jane Mary"}]}"#
        );
        t.write(
            0,
            &[
                FStep::Key(3),
                FStep::Index(0),
                FStep::Key(4),
                FStep::Index(0),
            ],
            &[],
            Leaf::Str("Jane".into()),
        );
        assert!(
            t.to_json(&names(), 0)
                .contains(r#""given":["Jane","Mary"]"#)
        );
        assert_eq!(
            t.array_len(0, &[FStep::Key(3), FStep::Index(0), FStep::Key(4)], &[]),
            2
        );
        let c = t.detached_object();
        t.write(c, &[FStep::Key(1)], &[], Leaf::Str("x".into()));
        t.append(0, CONTAINED, c);
        assert!(
            t.to_json(&names(), 0)
                .ends_with(r#""contained":[{"id":"x"}]}"#)
        );
    }
}
