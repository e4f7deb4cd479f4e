//! Filters: the small functions a rule's value passes through, in order.
//!
//! Date/time rules (documented in mappings/README.md): QUBS dates and times are site-local
//! civil times; they become instants through the site's IANA zone (jiff, with the bundled
//! tz database). A local time that does not exist (DST gap) is shifted forward by the
//! length of the gap; a local time that exists twice (DST overlap) takes the earlier
//! offset, i.e. the first occurrence (jiff's "compatible" disambiguation, as RFC 5545 and
//! Temporal do).

use std::collections::HashMap;

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, ZonedDateTime};

use crate::hl7::Delimiters;

/// A value flowing through a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// Nothing (missing, null or empty).
    None,
    /// One value.
    One(String),
    /// Several values (from `[*]`, a list filter, or `split`).
    Many(Vec<String>),
}

impl Val {
    /// Whether the value counts as present for fallbacks and `required`.
    pub fn is_present(&self) -> bool {
        match self {
            Val::None => false,
            Val::One(s) => !s.is_empty(),
            Val::Many(v) => !v.is_empty(),
        }
    }
}

/// Output of a date/time filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOut {
    /// UTC instant, `2026-11-20T08:15:00Z` (FHIR instant/dateTime).
    Instant,
    /// Offset date-time in the site zone, `2026-11-20T19:15:00+11:00`.
    Offset,
    /// HL7 TS in the site zone, `20261120191500+1100`.
    Hl7,
    /// Date only: `2026-11-20`.
    Date,
    /// HL7 date: `20261120`.
    Hl7Date,
}

impl TimeOut {
    /// Parses a filter argument.
    pub fn parse(s: &str) -> Option<TimeOut> {
        Some(match s {
            "instant" => TimeOut::Instant,
            "offset" => TimeOut::Offset,
            "hl7" => TimeOut::Hl7,
            "date" => TimeOut::Date,
            "hl7_date" => TimeOut::Hl7Date,
            _ => return None,
        })
    }
}

/// Part of a free-text personal name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePart {
    /// Family name.
    Family,
    /// First given name.
    Given,
    /// Further given names.
    Middle,
    /// Title such as Dr.
    Prefix,
    /// The whole name, normalised: `Prefix Given Middle Family`.
    Text,
}

/// Layout of an HL7 name value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hl7NameKind {
    /// XPN: family, given, middle, suffix, prefix, degree.
    Xpn,
    /// XCN / CNN / NDL name part: id first, then as XPN.
    Xcn,
}

/// Unmapped-value policy of a code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The rule fails.
    Error,
    /// The value goes through unchanged.
    PassThrough,
    /// The table's default is used.
    Default,
}

/// A compiled code table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Table name.
    pub name: String,
    /// Keys (lower-cased when `ignore_case`) to values.
    pub map: HashMap<String, String>,
    /// Compare keys case-insensitively (and trimmed).
    pub ignore_case: bool,
    /// What to do with values not in the table.
    pub policy: Policy,
    /// Value for [`Policy::Default`].
    pub default: Option<String>,
}

impl Table {
    /// Looks `v` up; `None` = unmapped.
    pub fn get(&self, v: &str) -> Option<&str> {
        let k = v.trim();
        if self.ignore_case {
            self.map.get(&k.to_lowercase()).map(String::as_str)
        } else {
            self.map.get(k).map(String::as_str)
        }
    }
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Remove surrounding whitespace.
    Trim,
    /// Upper case.
    Upper,
    /// Lower case.
    Lower,
    /// Fail the rule when there is no value.
    Required,
    /// Use this when there is no value.
    Default(String),
    /// Look up in the table with this index.
    Table(usize),
    /// Put text before a present value.
    Prefix(String),
    /// Put text after a present value.
    Suffix(String),
    /// Join several values with a separator.
    Join(String),
    /// Split one value on a separator.
    Split(String),
    /// Keep the first present (non-empty) of several values.
    First,
    /// Of several values, keep the one listed earliest here (`{rank: [preliminary, final]}`:
    /// preliminary if any is); values not listed rank after all listed ones.
    Rank(Vec<String>),
    /// Site-local `yyyy-MM-dd[ T]HH:mm[:ss]` (or a date) → the given form.
    SiteTime(TimeOut),
    /// An ISO instant or offset date-time (no offset = UTC) → the given form.
    Instant(TimeOut),
    /// An HL7 TS (no offset = site zone) → the given form.
    Hl7Time(TimeOut),
    /// A part of a free-text name.
    Name(NamePart),
    /// Display text of an HL7 name (XPN or XCN/CNN).
    Hl7Name(Hl7NameKind),
    /// Decode base64 (as UTF-8 text).
    Base64Decode,
    /// A calendar date (`yyyy-MM-dd`, or HL7 `YYYYMMDD`) → `date` or `hl7_date`, no zone
    /// involved (dates of birth must not move across midnight).
    Date(TimeOut),
}

/// Names of all filters, for "unknown filter" hints.
pub const NAMES: &[&str] = &[
    "trim",
    "upper",
    "lower",
    "required",
    "default",
    "table",
    "prefix",
    "suffix",
    "join",
    "split",
    "first",
    "rank",
    "site_time",
    "instant",
    "hl7_time",
    "name",
    "hl7_name",
    "base64_decode",
    "date",
];

/// Why a filter failed; the rule adds where. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// `required` found nothing.
    Required,
    /// A table with policy `error` did not have the value.
    Unmapped(String),
    /// The value had the wrong form.
    Invalid(String),
}

/// What filters need besides the value.
pub struct FilterEnv<'a> {
    /// Code tables of the mapping.
    pub tables: &'a [Table],
    /// The site's zone, when the input has one.
    pub zone: Option<&'a TimeZone>,
    /// Delimiters of the inbound HL7 message.
    pub delimiters: Delimiters,
    /// Unmapped values seen: (table, value) → count.
    pub unmapped: &'a mut Vec<(String, String)>,
}

/// Applies `f` to `v`.
pub fn apply(f: &Filter, v: Val, env: &mut FilterEnv<'_>) -> Result<Val, FilterError> {
    Ok(match f {
        Filter::Required => {
            if v.is_present() {
                v
            } else {
                return Err(FilterError::Required);
            }
        }
        Filter::Default(d) => {
            if v.is_present() {
                v
            } else {
                Val::One(d.clone())
            }
        }
        Filter::Join(sep) => match v {
            Val::Many(items) => Val::One(items.join(sep)),
            other => other,
        },
        Filter::Split(sep) => match v {
            Val::One(s) => Val::Many(
                s.split(sep.as_str())
                    .map(|x| x.trim().to_string())
                    .collect(),
            ),
            other => other,
        },
        Filter::First => match v {
            Val::Many(items) => items
                .into_iter()
                .find(|s| !s.is_empty())
                .map_or(Val::None, Val::One),
            other => other,
        },
        Filter::Rank(order) => match v {
            Val::Many(items) => items
                .into_iter()
                .filter(|s| !s.is_empty())
                .enumerate()
                .min_by_key(|(i, s)| (order.iter().position(|o| o == s).unwrap_or(order.len()), *i))
                .map_or(Val::None, |(_, s)| Val::One(s)),
            other => other,
        },
        _ => match v {
            Val::None => Val::None,
            Val::One(s) => Val::One(one(f, s, env)?),
            Val::Many(items) => Val::Many(
                items
                    .into_iter()
                    .map(|s| one(f, s, env))
                    .collect::<Result<_, _>>()?,
            ),
        },
    })
}

fn one(f: &Filter, s: String, env: &mut FilterEnv<'_>) -> Result<String, FilterError> {
    Ok(match f {
        Filter::Trim => {
            let t = s.trim();
            if t.len() == s.len() { s } else { t.to_string() }
        }
        Filter::Upper => s.to_uppercase(),
        Filter::Lower => s.to_lowercase(),
        Filter::Prefix(p) if !s.is_empty() => format!("{p}{s}"),
        Filter::Suffix(p) if !s.is_empty() => format!("{s}{p}"),
        Filter::Prefix(_) | Filter::Suffix(_) => s,
        Filter::Table(i) => {
            let t = &env.tables[*i];
            if s.is_empty() {
                return Ok(s);
            }
            match t.get(&s) {
                Some(v) => v.to_string(),
                None => {
                    env.unmapped.push((t.name.clone(), s.clone()));
                    match t.policy {
                        Policy::PassThrough => s,
                        Policy::Default => t.default.clone().unwrap_or_default(),
                        Policy::Error => return Err(FilterError::Unmapped(t.name.clone())),
                    }
                }
            }
        }
        Filter::SiteTime(out) => {
            if s.is_empty() {
                return Ok(s);
            }
            let zone = env.zone.ok_or_else(no_zone)?;
            let z = local_to_zoned(&s, zone)?;
            format_time(&z, *out)
        }
        Filter::Instant(out) => {
            if s.is_empty() {
                return Ok(s);
            }
            let ts = parse_instant(&s)?;
            let zone = match out {
                TimeOut::Instant => TimeZone::UTC,
                _ => env.zone.cloned().unwrap_or(TimeZone::UTC),
            };
            format_time(&ts.to_zoned_datetime(zone), *out)
        }
        Filter::Hl7Time(out) => {
            if s.is_empty() {
                return Ok(s);
            }
            let z = parse_hl7_ts(&s, env.zone)?;
            format_time(&z, *out)
        }
        Filter::Date(out) => {
            if s.is_empty() {
                return Ok(s);
            }
            let t = s.trim();
            let t = t
                .get(..10)
                .filter(|x| x.as_bytes().get(4) == Some(&b'-'))
                .unwrap_or(t);
            let d: jiff::civil::Date = if t.len() >= 8
                && t.bytes().take(8).all(|b| b.is_ascii_digit())
            {
                format!("{}-{}-{}", &t[..4], &t[4..6], &t[6..8]).parse()
            } else {
                t.parse()
            }
            .map_err(|_| FilterError::Invalid("expected a date yyyy-MM-dd or YYYYMMDD".into()))?;
            match out {
                TimeOut::Hl7Date | TimeOut::Hl7 => d.strftime("%Y%m%d").to_string(),
                _ => d.strftime("%Y-%m-%d").to_string(),
            }
        }
        Filter::Name(part) => name_part(&s, *part),
        Filter::Hl7Name(kind) => hl7_name(&s, *kind, &env.delimiters),
        Filter::Base64Decode => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim().as_bytes())
                .map_err(|_| FilterError::Invalid("not valid base64".into()))?;
            String::from_utf8(bytes)
                .map_err(|_| FilterError::Invalid("base64 content is not UTF-8 text".into()))?
        }
        Filter::Required
        | Filter::Default(_)
        | Filter::Join(_)
        | Filter::Split(_)
        | Filter::First
        | Filter::Rank(_) => unreachable!("list-level filters are handled in apply"),
    })
}

fn no_zone() -> FilterError {
    FilterError::Invalid("no site time zone (site.timeZone) to interpret a local time".into())
}

/// Site-local civil date-time → zoned, with gap/overlap rules of the module doc.
pub fn local_to_zoned(s: &str, zone: &TimeZone) -> Result<ZonedDateTime, FilterError> {
    let t = s.trim().replacen(' ', "T", 1);
    let dt: DateTime = if t.len() == 10 {
        t.parse::<jiff::civil::Date>()
            .map_err(|_| FilterError::Invalid("expected a site-local yyyy-MM-dd".into()))?
            .to_datetime(jiff::civil::Time::midnight())
    } else {
        t.parse().map_err(|_| {
            FilterError::Invalid("expected a site-local date and time yyyy-MM-ddTHH:mm:ss".into())
        })?
    };
    zone.to_ambiguous_zoned_datetime(dt)
        .compatible()
        .map_err(|_| FilterError::Invalid("local time out of range".into()))
}

fn parse_instant(s: &str) -> Result<Timestamp, FilterError> {
    let t = s.trim();
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts);
    }
    // QUBS date-times are UTC even when written without `Z`.
    t.parse::<DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned_datetime(TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| FilterError::Invalid("expected an ISO 8601 date-time".into()))
}

/// Parses an HL7 TS/DTM `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`; without an offset the
/// site zone is used.
pub fn parse_hl7_ts(s: &str, zone: Option<&TimeZone>) -> Result<ZonedDateTime, FilterError> {
    let bad = || FilterError::Invalid("expected an HL7 timestamp YYYYMMDD[HHMM[SS]][+ZZZZ]".into());
    let s = s.trim();
    // Some senders put the degree of precision in a second component (TS.2): drop it.
    let s = s.split('^').next().unwrap_or(s);
    let (body, off) = match s.find(['+', '-']) {
        Some(p) => (&s[..p], Some(&s[p..])),
        None => (s, None),
    };
    let (digits, frac) = match body.find('.') {
        Some(p) => (&body[..p], &body[p + 1..]),
        None => (body, ""),
    };
    let well_formed = (8..=14).contains(&digits.len())
        && digits.len() % 2 == 0
        && digits.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(bad());
    }
    let n = |a: usize, b: usize| -> i64 { digits.get(a..b).map_or(0, |x| x.parse().unwrap_or(0)) };
    let nanos = if frac.is_empty() {
        0
    } else {
        let f: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        f.parse::<i32>().map_err(|_| bad())?
    };
    let dt = DateTime::new(
        n(0, 4) as i16,
        n(4, 6) as i8,
        n(6, 8) as i8,
        n(8, 10) as i8,
        n(10, 12) as i8,
        n(12, 14) as i8,
        nanos,
    )
    .map_err(|_| bad())?;
    match off {
        Some(o) => {
            let b = o.as_bytes();
            if b.len() != 5 || !b[1..].iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let h: i32 = o[1..3].parse().map_err(|_| bad())?;
            let m: i32 = o[3..5].parse().map_err(|_| bad())?;
            let secs = (h * 3600 + m * 60) * if b[0] == b'-' { -1 } else { 1 };
            let offset = Offset::from_seconds(secs).map_err(|_| bad())?;
            TimeZone::fixed(offset)
                .to_zoned_datetime(dt)
                .map_err(|_| bad())
        }
        None => {
            let zone = zone.ok_or_else(|| {
                FilterError::Invalid(
                    "HL7 timestamp without offset and no site time zone to read it in".into(),
                )
            })?;
            zone.to_ambiguous_zoned_datetime(dt)
                .compatible()
                .map_err(|_| bad())
        }
    }
}

fn format_time(z: &ZonedDateTime, out: TimeOut) -> String {
    match out {
        TimeOut::Instant => z.timestamp().to_string(),
        TimeOut::Offset => z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        TimeOut::Hl7 => z.strftime("%Y%m%d%H%M%S%z").to_string(),
        TimeOut::Date => z.strftime("%Y-%m-%d").to_string(),
        TimeOut::Hl7Date => z.strftime("%Y%m%d").to_string(),
    }
}

const TITLES: &[&str] = &[
    "dr", "dr.", "prof", "prof.", "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "miss", "a/prof",
    "assoc", "sir", "dame",
];

/// Splits a free-text name: `Family, Given Middle` when there is a comma, `Family^Given^Middle`
/// when it was stored HL7-style, else `[Title] Given [Middle…] Family`.
pub fn split_name(s: &str) -> (Vec<&str>, Vec<&str>, Option<&str>) {
    let (family, rest): (Option<&str>, &str) = match s.split_once(',').or_else(|| s.split_once('^'))
    {
        Some((f, r)) => (Some(f.trim()).filter(|f| !f.is_empty()), r),
        None => (None, s),
    };
    let mut words: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || c == '^')
        .filter(|w| !w.is_empty())
        .collect();
    let mut prefix = Vec::new();
    while let Some(w) = words.first() {
        if TITLES.contains(&w.to_lowercase().as_str()) {
            prefix.push(*w);
            words.remove(0);
        } else {
            break;
        }
    }
    let family = match family {
        Some(f) => Some(f),
        None => words.pop(),
    };
    (prefix, words, family)
}

fn name_part(s: &str, part: NamePart) -> String {
    let (prefix, given, family) = split_name(s);
    match part {
        NamePart::Family => family.unwrap_or("").to_string(),
        NamePart::Given => given.first().copied().unwrap_or("").to_string(),
        NamePart::Middle => given.get(1..).map(|m| m.join(" ")).unwrap_or_default(),
        NamePart::Prefix => prefix.join(" "),
        NamePart::Text => prefix
            .iter()
            .chain(given.iter())
            .chain(family.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn hl7_name(s: &str, kind: Hl7NameKind, d: &Delimiters) -> String {
    let (component, sub) = (d.component as char, d.subcomponent as char);
    let first = s.split(component).next().unwrap_or("");
    let mut parts: Vec<&str> = if kind == Hl7NameKind::Xcn && first.contains(sub) {
        // NDL / CNN (OBR-32 to OBR-35): `id&family&given&…` in the first component.
        first.split(sub).map(str::trim).collect()
    } else {
        // XCN / XPN: one component per part; a family name's own sub-components (FN:
        // surname&prefix&…) give the surname.
        s.split(component)
            .map(|c| c.split(sub).next().unwrap_or("").trim())
            .collect()
    };
    if kind == Hl7NameKind::Xcn && !parts.is_empty() {
        parts.remove(0);
    }
    let p = |i: usize| parts.get(i).copied().unwrap_or("");
    // family, given, middle, suffix, prefix → "Prefix Given Middle Family Suffix"
    [p(4), p(1), p(2), p(0), p(3)]
        .iter()
        .filter(|x| !x.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stored_hl7_style_split_on_the_component_separator() {
        assert_eq!(
            split_name("Nguyễn^Văn An"),
            (vec![], vec!["Văn", "An"], Some("Nguyễn"))
        );
        assert_eq!(
            split_name("CITIZEN, Jane Mary"),
            (vec![], vec!["Jane", "Mary"], Some("CITIZEN"))
        );
        assert_eq!(
            split_name("Dr Priya Raman"),
            (vec!["Dr"], vec!["Priya"], Some("Raman"))
        );
    }

    fn env<'a>(
        zone: Option<&'a TimeZone>,
        un: &'a mut Vec<(String, String)>,
        tables: &'a [Table],
    ) -> FilterEnv<'a> {
        FilterEnv {
            tables,
            zone,
            delimiters: Delimiters::default(),
            unmapped: un,
        }
    }

    fn run(f: Filter, s: &str, zone: Option<&TimeZone>) -> Result<Val, FilterError> {
        let mut un = Vec::new();
        apply(&f, Val::One(s.into()), &mut env(zone, &mut un, &[]))
    }

    #[test]
    fn dst_gap_shifts_forward_and_overlap_takes_earlier() {
        let syd = jiff::tz::db().get("Australia/Sydney").unwrap();
        // 2026-10-04 02:30 does not exist in Sydney (clocks jump 02:00 → 03:00).
        assert_eq!(
            run(
                Filter::SiteTime(TimeOut::Offset),
                "2026-10-04T02:30:00",
                Some(&syd)
            )
            .unwrap(),
            Val::One("2026-10-04T03:30:00+11:00".into())
        );
        // 2026-04-05 02:30 happens twice (03:00 → 02:00): the first, at +11:00.
        assert_eq!(
            run(
                Filter::SiteTime(TimeOut::Instant),
                "2026-04-05 02:30:00",
                Some(&syd)
            )
            .unwrap(),
            Val::One("2026-04-04T15:30:00Z".into())
        );
        assert_eq!(
            run(
                Filter::SiteTime(TimeOut::Hl7),
                "2026-07-01T09:00:00",
                Some(&syd)
            )
            .unwrap(),
            Val::One("20260701090000+1000".into())
        );
        assert!(run(Filter::SiteTime(TimeOut::Hl7), "2026-07-01T09:00:00", None).is_err());
        assert!(run(Filter::SiteTime(TimeOut::Hl7), "01/07/2026", Some(&syd)).is_err());
    }

    #[test]
    fn hl7_timestamps() {
        let syd = jiff::tz::db().get("Australia/Sydney").unwrap();
        assert_eq!(
            run(
                Filter::Hl7Time(TimeOut::Instant),
                "20100604234724.085-0400",
                None
            )
            .unwrap(),
            Val::One("2010-06-05T03:47:24.085Z".into())
        );
        assert_eq!(
            run(
                Filter::Hl7Time(TimeOut::Instant),
                "202201011000",
                Some(&syd)
            )
            .unwrap(),
            Val::One("2021-12-31T23:00:00Z".into())
        );
        assert!(run(Filter::Hl7Time(TimeOut::Instant), "202201011000", None).is_err());
        assert!(run(Filter::Hl7Time(TimeOut::Instant), "Aug 15, 1942", None).is_err());
        assert_eq!(
            run(
                Filter::Instant(TimeOut::Hl7),
                "2026-11-20T08:15:00Z",
                Some(&syd)
            )
            .unwrap(),
            Val::One("20261120191500+1100".into())
        );
    }

    #[test]
    fn names() {
        assert_eq!(
            split_name("Dr Jane Mary Smith"),
            (vec!["Dr"], vec!["Jane", "Mary"], Some("Smith"))
        );
        assert_eq!(
            split_name("SMITH, John"),
            (vec![], vec!["John"], Some("SMITH"))
        );
        assert_eq!(
            run(Filter::Name(NamePart::Text), "  Smith ,  Dr John ", None).unwrap(),
            Val::One("Dr John Smith".into())
        );
        assert_eq!(
            run(
                Filter::Hl7Name(Hl7NameKind::Xcn),
                "&VerifyingObserverFN&VerifyingObserverGN&VerifyingObserverMN&&DR&Md",
                None
            )
            .unwrap(),
            Val::One("DR VerifyingObserverGN VerifyingObserverMN VerifyingObserverFN".into())
        );
        assert_eq!(
            run(Filter::Hl7Name(Hl7NameKind::Xpn), "Doe^Jane^T", None).unwrap(),
            Val::One("Jane T Doe".into())
        );
        // OBR-32 in both layouts: NDL (sub-components, with more components after) and
        // XCN-style components.
        assert_eq!(
            run(
                Filter::Hl7Name(Hl7NameKind::Xcn),
                "3312874B&Súilleabháin&Tomás&&&Dr^20260101^^^RAD",
                None
            )
            .unwrap(),
            Val::One("Dr Tomás Súilleabháin".into())
        );
        assert_eq!(
            run(
                Filter::Hl7Name(Hl7NameKind::Xcn),
                "1730152098^WILLIAMS^SARAH^K^^DR^MD^^NPI",
                None
            )
            .unwrap(),
            Val::One("DR SARAH K WILLIAMS".into())
        );
    }

    #[test]
    fn tables_and_policies() {
        let mk = |policy| Table {
            name: "priority".into(),
            map: [("urgent".to_string(), "urgent".to_string())].into(),
            ignore_case: true,
            policy,
            default: Some("routine".into()),
        };
        let tables = [
            mk(Policy::Default),
            mk(Policy::PassThrough),
            mk(Policy::Error),
        ];
        let mut un = Vec::new();
        let mut e = env(None, &mut un, &tables);
        assert_eq!(
            apply(&Filter::Table(0), Val::One(" URGENT ".into()), &mut e).unwrap(),
            Val::One("urgent".into())
        );
        assert_eq!(
            apply(&Filter::Table(0), Val::One("soon".into()), &mut e).unwrap(),
            Val::One("routine".into())
        );
        assert_eq!(
            apply(&Filter::Table(1), Val::One("soon".into()), &mut e).unwrap(),
            Val::One("soon".into())
        );
        assert_eq!(
            apply(&Filter::Table(2), Val::One("soon".into()), &mut e),
            Err(FilterError::Unmapped("priority".into()))
        );
        assert_eq!(un.len(), 3);
    }

    #[test]
    fn list_filters() {
        let mut un = Vec::new();
        let mut e = env(None, &mut un, &[]);
        let v = apply(&Filter::Split(",".into()), Val::One("a, b".into()), &mut e).unwrap();
        assert_eq!(v, Val::Many(vec!["a".into(), "b".into()]));
        assert_eq!(
            apply(&Filter::Join("\n".into()), v.clone(), &mut e).unwrap(),
            Val::One("a\nb".into())
        );
        assert_eq!(
            apply(&Filter::First, v, &mut e).unwrap(),
            Val::One("a".into())
        );
        let gaps = Val::Many(vec!["".into(), "b".into()]);
        assert_eq!(
            apply(&Filter::First, gaps, &mut e).unwrap(),
            Val::One("b".into())
        );
        let rank = Filter::Rank(vec!["preliminary".into(), "final".into()]);
        let statuses = |v: &[&str]| Val::Many(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            apply(&rank, statuses(&["final", "", "preliminary"]), &mut e).unwrap(),
            Val::One("preliminary".into())
        );
        assert_eq!(
            apply(&rank, statuses(&["final", "final"]), &mut e).unwrap(),
            Val::One("final".into())
        );
        assert_eq!(
            apply(&rank, statuses(&["", ""]), &mut e).unwrap(),
            Val::None
        );
        assert_eq!(
            apply(&Filter::Required, Val::One(String::new()), &mut e),
            Err(FilterError::Required)
        );
        assert_eq!(
            apply(&Filter::Default("x".into()), Val::None, &mut e).unwrap(),
            Val::One("x".into())
        );
        assert_eq!(
            apply(
                &Filter::Prefix("ALERT: ".into()),
                Val::One("y".into()),
                &mut e
            )
            .unwrap(),
            Val::One("ALERT: y".into())
        );
        assert_eq!(
            apply(
                &Filter::Date(TimeOut::Hl7Date),
                Val::One("1942-08-15".into()),
                &mut e
            )
            .unwrap(),
            Val::One("19420815".into())
        );
        assert_eq!(
            apply(
                &Filter::Date(TimeOut::Date),
                Val::One("19420815".into()),
                &mut e
            )
            .unwrap(),
            Val::One("1942-08-15".into())
        );
        assert!(
            apply(
                &Filter::Date(TimeOut::Date),
                Val::One("Aug 15, 1942".into()),
                &mut e
            )
            .is_err()
        );
        assert_eq!(
            apply(&Filter::Base64Decode, Val::One("aGk=".into()), &mut e).unwrap(),
            Val::One("hi".into())
        );
    }
}
