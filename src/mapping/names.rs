//! Reading a personal name that QUBS stores in one text field (`patientName`,
//! `doctorName`, a user's `fullName`) into its parts, for the `name` filter.
//!
//! Mapping files take structured first/last fields as they are; only a single-field name
//! is parsed, and parsing must never invent a wrong split. So:
//! - `Family^Given^Middle^Suffix^Prefix` (stored HL7-style) is read by component, words
//!   inside a component are never split;
//! - `Family, [Title] Given Middle…` keeps everything before the comma as the family name;
//! - `[Title] Given [Middle…] Family [Suffix]` takes the last word as the family name
//!   together with the family-name particles just before it (`Te Rangi`, `Ó Súilleabháin`,
//!   `van der Berg`, `de la Cruz`, `Mac Mathúna`); the first word is always a given name.
//!   Apostrophes and hyphens belong to their word (`O'Brien`, `d'Arcy`, `Mei-Ling`).
//!
//! Titles (Dr, Prof, …) become the prefix, generational suffixes (Jr, III) the suffix.

use std::borrow::Cow;

/// Words that open a name as a title (compared ignoring case).
const TITLES: &[&str] = &[
    "dr", "dr.", "prof", "prof.", "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "miss", "mx", "a/prof",
    "assoc", "assoc.", "sir", "dame",
];

/// Words that close a name as a generational suffix (compared ignoring case).
const SUFFIXES: &[&str] = &["jr", "jr.", "sr", "sr.", "ii", "iii", "iv"];

/// Family-name particles: a word from this list directly before the last word (or before
/// another particle) is part of the family name. Compared ignoring case. `al`, `el` and
/// `do` are left out: they are given names or whole family names as often as particles.
const PARTICLES: &[&str] = &[
    // Dutch, German, Flemish
    "van", "von", "der", "den", "ter", "ten", "zu", "zum", "zur", "vander",
    // Romance languages
    "de", "del", "della", "dei", "degli", "di", "da", "das", "dos", "du", "des", "la", "le", "lo",
    "san", "santa", "st", "st.", "saint", // Irish and Scottish Gaelic, Welsh
    "ó", "o", "ní", "nic", "ua", "uí", "mac", "mc", "ap", // Māori
    "te", // Arabic, Malay patronymics
    "bin", "binti", "bint", "ibn", "abu",
];

/// The parts of a name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedName {
    /// Titles, in order (`Dr`).
    pub prefix: Vec<String>,
    /// Given names: the first is the given name, the rest middle names.
    pub given: Vec<String>,
    /// The family name, particles included.
    pub family: Option<String>,
    /// Generational suffix (`Jr`).
    pub suffix: Option<String>,
}

fn is_in(list: &[&str], word: &str) -> bool {
    let w = word.to_lowercase();
    list.contains(&w.as_str())
}

/// Parses a single-field name (see the module doc).
pub fn parse(s: &str) -> ParsedName {
    let s = s.trim();
    if s.contains('^') {
        return parse_xpn(s);
    }
    let (family, rest) = match s.split_once(',') {
        Some((f, r)) => {
            let f = squash(f);
            (Some(f).filter(|f| !f.is_empty()), r)
        }
        None => (None, s),
    };
    let mut words: Vec<&str> = rest.split_whitespace().collect();
    let mut prefix = Vec::new();
    while words.len() > 1 || (family.is_some() && !words.is_empty()) {
        if is_in(TITLES, words[0]) {
            prefix.push(words.remove(0).to_string());
        } else {
            break;
        }
    }
    // A lone title ("Dr") is not a name.
    if words.len() == 1 && family.is_none() && is_in(TITLES, words[0]) {
        prefix.push(words.remove(0).to_string());
    }
    let mut suffix = None;
    if (words.len() > 2 || (family.is_some() && words.len() > 1))
        && let Some(last) = words.last()
        && is_in(SUFFIXES, last)
    {
        suffix = words.pop().map(str::to_string);
    }
    let family = match family {
        Some(f) => Some(f),
        None if words.is_empty() => None,
        None => {
            // The last word, with the particles before it; the first word stays given.
            let mut start = words.len() - 1;
            while start > 1 && is_in(PARTICLES, words[start - 1]) {
                start -= 1;
            }
            let f = words[start..].join(" ");
            words.truncate(start);
            Some(f)
        }
    };
    ParsedName {
        prefix,
        given: words.into_iter().map(str::to_string).collect(),
        family,
        suffix,
    }
}

/// `Family^Given^Middle^Suffix^Prefix`: each component as written.
fn parse_xpn(s: &str) -> ParsedName {
    let comps: Vec<String> = s.split('^').map(squash).collect();
    let c = |i: usize| comps.get(i).cloned().filter(|x| !x.is_empty());
    let given: Vec<String> = [c(1), c(2)].into_iter().flatten().collect();
    ParsedName {
        prefix: c(4).into_iter().collect(),
        given,
        family: c(0),
        suffix: c(3),
    }
}

/// Trimmed, inner runs of white space made one space.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl ParsedName {
    /// `Prefix Given Middle Family Suffix`.
    pub fn text(&self) -> String {
        self.prefix
            .iter()
            .chain(self.given.iter())
            .chain(self.family.iter())
            .chain(self.suffix.iter())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The parts of a name as the `name` filter gives them (`Text` is `Prefix Given Middle
/// Family Suffix`), borrowed from the input where they are written there as they come out:
/// the common `[Title] Given [Middle] Family` needs no copy at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameText<'s> {
    /// Family name, particles included.
    pub family: Cow<'s, str>,
    /// First given name.
    pub given: Cow<'s, str>,
    /// Further given names.
    pub middle: Cow<'s, str>,
    /// Titles.
    pub prefix: Cow<'s, str>,
    /// Generational suffix.
    pub suffix: Cow<'s, str>,
    /// The whole name, normalised.
    pub text: Cow<'s, str>,
}

impl NameText<'_> {
    fn owned(n: &ParsedName) -> NameText<'static> {
        NameText {
            family: Cow::Owned(n.family.clone().unwrap_or_default()),
            given: Cow::Owned(n.given.first().cloned().unwrap_or_default()),
            middle: Cow::Owned(n.given.get(1..).map(|m| m.join(" ")).unwrap_or_default()),
            prefix: Cow::Owned(n.prefix.join(" ")),
            suffix: Cow::Owned(n.suffix.clone().unwrap_or_default()),
            text: Cow::Owned(n.text()),
        }
    }
}

/// Words a name is split into at most without falling back to [`parse`].
const MAX_WORDS: usize = 12;

/// [`parse`] as [`NameText`]: the same parts, borrowed from `s` where possible.
pub fn parts(s: &str) -> NameText<'_> {
    let s = s.trim();
    if s.contains(['^', ',']) {
        return NameText::owned(&parse(s));
    }
    let mut buf = [""; MAX_WORDS];
    let mut n = 0;
    for w in s.split_whitespace() {
        if n == MAX_WORDS {
            return NameText::owned(&parse(s));
        }
        buf[n] = w;
        n += 1;
    }
    let mut words = &buf[..n];
    let mut prefix = &buf[..0];
    // Titles open the name, but a lone word stays a name unless it is only a title.
    let mut t = 0;
    while words.len() - t > 1 && is_word_in(TITLES, words[t]) {
        t += 1;
    }
    if words.len() - t == 1 && is_word_in(TITLES, words[t]) {
        t += 1;
    }
    if t > 0 {
        prefix = &words[..t];
        words = &words[t..];
    }
    let mut suffix = &buf[..0];
    if words.len() > 2 && is_word_in(SUFFIXES, words[words.len() - 1]) {
        suffix = &words[words.len() - 1..];
        words = &words[..words.len() - 1];
    }
    let (given, family) = if words.is_empty() {
        (words, words)
    } else {
        let mut start = words.len() - 1;
        while start > 1 && is_word_in(PARTICLES, words[start - 1]) {
            start -= 1;
        }
        (&words[..start], &words[start..])
    };
    NameText {
        family: join_words(s, family),
        given: Cow::Borrowed(given.first().copied().unwrap_or("")),
        middle: join_words(s, given.get(1..).unwrap_or(&[])),
        prefix: join_words(s, prefix),
        suffix: join_words(s, suffix),
        text: join_words(s, &buf[..n]),
    }
}

/// Words of `s` joined by one space: a slice of `s` when they stand so in it.
fn join_words<'s>(s: &'s str, words: &[&'s str]) -> Cow<'s, str> {
    let (Some(first), Some(last)) = (words.first(), words.last()) else {
        return Cow::Borrowed("");
    };
    let base = s.as_ptr() as usize;
    let start = first.as_ptr() as usize - base;
    let end = last.as_ptr() as usize - base + last.len();
    let adjacent = words.windows(2).all(|w| {
        let a_end = w[0].as_ptr() as usize - base + w[0].len();
        let b_start = w[1].as_ptr() as usize - base;
        b_start == a_end + 1 && s.as_bytes()[a_end] == b' '
    });
    if adjacent {
        Cow::Borrowed(&s[start..end])
    } else {
        Cow::Owned(words.join(" "))
    }
}

/// `word` is in `list` (lower-case entries), compared ignoring case, without a copy.
fn is_word_in(list: &[&str], word: &str) -> bool {
    // An ASCII word lower-cases to ASCII of the same length: a byte compare decides.
    if word.is_ascii() {
        return list.iter().any(|x| x.eq_ignore_ascii_case(word));
    }
    list.iter()
        .any(|x| x.chars().eq(word.chars().flat_map(char::to_lowercase)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fgm(s: &str) -> (String, String, String, String) {
        let n = parse(s);
        (
            n.prefix.join(" "),
            n.given.first().cloned().unwrap_or_default(),
            n.given.get(1..).map(|m| m.join(" ")).unwrap_or_default(),
            n.family.unwrap_or_default(),
        )
    }

    #[test]
    fn particles_stay_with_the_family_name() {
        assert_eq!(
            fgm("Māui Te Rangi"),
            ("".into(), "Māui".into(), "".into(), "Te Rangi".into())
        );
        assert_eq!(
            fgm("Dr Tomás Ó Súilleabháin"),
            (
                "Dr".into(),
                "Tomás".into(),
                "".into(),
                "Ó Súilleabháin".into()
            )
        );
        assert_eq!(fgm("Pieter van der Berg").3, "van der Berg");
        assert_eq!(fgm("María de la Cruz").3, "de la Cruz");
        assert_eq!(fgm("Seán Mac Mathúna").3, "Mac Mathúna");
        // The first word is always a given name, even when it looks like a particle.
        assert_eq!(
            fgm("De Shawn Brown"),
            ("".into(), "De".into(), "Shawn".into(), "Brown".into())
        );
        assert_eq!(
            fgm("Te Rangi"),
            ("".into(), "Te".into(), "".into(), "Rangi".into())
        );
    }

    #[test]
    fn apostrophes_hyphens_titles_and_middle_names() {
        assert_eq!(
            fgm("Mrs Jane Mary O'Brien"),
            ("Mrs".into(), "Jane".into(), "Mary".into(), "O'Brien".into())
        );
        assert_eq!(fgm("Noël d'Arcy").3, "d'Arcy");
        assert_eq!(
            fgm("Dr Mei-Ling Chen"),
            ("Dr".into(), "Mei-Ling".into(), "".into(), "Chen".into())
        );
        assert_eq!(fgm("Dr Alan Referrer").1, "Alan");
        assert_eq!(parse("John Smith Jr").suffix.as_deref(), Some("Jr"));
        assert_eq!(fgm("Dr"), ("Dr".into(), "".into(), "".into(), "".into()));
    }

    #[test]
    fn borrowed_parts_equal_the_parsed_ones() {
        for s in [
            "Māui Te Rangi",
            "Dr Tomás Ó Súilleabháin",
            "Mrs Jane Mary O'Brien",
            "  Dr   Jane  Mary O'Brien Jr ",
            "John Smith Jr",
            "Dr",
            "Madonna",
            "Dr Prof",
            "De Shawn Brown",
            "Pieter van der Berg",
            "CITIZEN, Dr Jane Mary",
            "Smith^John^Paul^Jr^Dr",
            "a b c d e f g h i j k l m n o",
            "",
        ] {
            let n = parse(s);
            let p = parts(s);
            assert_eq!(p.family, n.family.clone().unwrap_or_default(), "{s}");
            assert_eq!(p.given, n.given.first().cloned().unwrap_or_default(), "{s}");
            assert_eq!(
                p.middle,
                n.given.get(1..).map(|m| m.join(" ")).unwrap_or_default(),
                "{s}"
            );
            assert_eq!(p.prefix, n.prefix.join(" "), "{s}");
            assert_eq!(p.suffix, n.suffix.clone().unwrap_or_default(), "{s}");
            assert_eq!(p.text, n.text(), "{s}");
        }
        // The usual form is not copied.
        let p = parts("Mrs Jane Mary O'Brien");
        assert!(matches!(p.text, Cow::Borrowed(_)) && matches!(p.family, Cow::Borrowed(_)));
    }

    proptest::proptest! {
        /// Titles, particles and suffixes in any case, ASCII or not, split the same way by
        /// the borrowing reader and by the parser.
        #[test]
        fn borrowed_parts_agree_with_the_parser_in_any_case(
            words in proptest::collection::vec(
                proptest::sample::select(vec![
                    "dr", "DR", "Prof.", "MRS", "van", "VAN", "der", "De", "LA", "Te", "MAC",
                    "mc", "jr", "III", "SR.", "Ó", "ó", "NÍ", "Māui", "Smith", "o'brien",
                    "Mei-Ling", "ANNE", "İbrahim", "STRAẞE",
                ]),
                0..7,
            )
        ) {
            let s = words.join(" ");
            proptest::prop_assert_eq!(parts(&s), NameText::owned(&parse(&s)), "{}", s);
        }
    }

    #[test]
    fn comma_and_hl7_forms_keep_their_parts() {
        assert_eq!(
            fgm("  TE RANGI,  Māui "),
            ("".into(), "Māui".into(), "".into(), "TE RANGI".into())
        );
        assert_eq!(
            fgm("CITIZEN, Dr Jane Mary"),
            ("Dr".into(), "Jane".into(), "Mary".into(), "CITIZEN".into())
        );
        // HL7-style: the given-name component is not split into words.
        let n = parse("Nguyễn^Văn An");
        assert_eq!(n.family.as_deref(), Some("Nguyễn"));
        assert_eq!(n.given, ["Văn An"]);
        let n = parse("Smith^John^Paul^Jr^Dr");
        assert_eq!(
            (n.given.len(), n.suffix.as_deref(), n.prefix.len()),
            (2, Some("Jr"), 1)
        );
        assert_eq!(parse("王^芳").text(), "芳 王");
    }
}
