//! Filters: the small functions a rule's value passes through, in order.
//!
//! Date/time rules (documented in mappings/README.md): QUBS dates and times are site-local
//! civil times; they become instants through the site's IANA zone (jiff, with the bundled
//! tz database). A local time that does not exist (DST gap) is shifted forward by the
//! length of the gap; a local time that exists twice (DST overlap) takes the earlier
//! offset, i.e. the first occurrence (jiff's "compatible" disambiguation, as RFC 5545 and
//! Temporal do).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, ZonedDateTime};

use crate::hl7::Delimiters;

/// A value flowing through a rule: text borrowed from the input or the mapping where it
/// is passed on unchanged, owned where a filter made new text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Val<'a> {
    /// Nothing (missing, null or empty).
    #[default]
    None,
    /// One value.
    One(Cow<'a, str>),
    /// Several values (from `[*]`, a list filter, or `split`).
    Many(Vec<Cow<'a, str>>),
}

impl Val<'_> {
    /// Whether the value counts as present for fallbacks and `required`.
    pub fn is_present(&self) -> bool {
        match self {
            Val::None => false,
            Val::One(s) => !s.is_empty(),
            Val::Many(v) => !v.is_empty(),
        }
    }

    /// The value a single target receives: the text, or the first non-empty item of a
    /// list; `None` when there is nothing to write.
    pub fn written(&self) -> Option<&str> {
        match self {
            Val::One(s) if !s.is_empty() => Some(s),
            Val::Many(items) => items.iter().map(|s| &**s).find(|s| !s.is_empty()),
            _ => None,
        }
    }
}

/// Output of a date/time filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamePart {
    /// Family name.
    Family,
    /// First given name.
    Given,
    /// Further given names.
    Middle,
    /// Title such as Dr.
    Prefix,
    /// Generational suffix such as Jr.
    Suffix,
    /// The whole name, normalised: `Prefix Given Middle Family Suffix`.
    Text,
}

/// Layout of an HL7 name value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// FNV-1a: code table keys are a few bytes, where SipHash's set-up costs more than the
/// lookup (the keys come from the mapping files, not from an attacker).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The map of a code table.
pub type TableMap = HashMap<String, String, BuildHasherDefault<Fnv>>;

/// A compiled code table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Table name.
    pub name: String,
    /// Keys (lower-cased when `ignore_case`) to values.
    pub map: TableMap,
    /// Compare keys case-insensitively (and trimmed).
    pub ignore_case: bool,
    /// What to do with values not in the table.
    pub policy: Policy,
    /// Value for [`Policy::Default`].
    pub default: Option<String>,
    /// The file and line of the table's `values:` (its own file for `file:` tables): where
    /// an analyst adds a value the table lacks.
    pub values_at: Option<(std::path::PathBuf, u32)>,
}

impl Table {
    /// Looks `v` up; `None` = unmapped.
    pub fn get(&self, v: &str) -> Option<&str> {
        let k = v.trim();
        if self.ignore_case && !is_lower(k) {
            // Short ASCII codes (`CT`, `STAT`) are lower-cased on the stack, not copied.
            let mut buf = [0u8; 32];
            if k.is_ascii() && k.len() <= buf.len() {
                let low = &mut buf[..k.len()];
                low.copy_from_slice(k.as_bytes());
                low.make_ascii_lowercase();
                let low = std::str::from_utf8(low).expect("ASCII stays UTF-8");
                return self.map.get(low).map(String::as_str);
            }
            self.map.get(&k.to_lowercase()).map(String::as_str)
        } else {
            self.map.get(k).map(String::as_str)
        }
    }
}

/// Whether lower-casing `s` would leave it as it is.
fn is_lower(s: &str) -> bool {
    s.bytes().all(|b| !b.is_ascii_uppercase())
        && (s.is_ascii() || s.chars().all(|c| c.to_lowercase().eq(std::iter::once(c))))
}

/// Whether upper-casing `s` would leave it as it is.
fn is_upper(s: &str) -> bool {
    s.bytes().all(|b| !b.is_ascii_lowercase())
        && (s.is_ascii() || s.chars().all(|c| c.to_uppercase().eq(std::iter::once(c))))
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// The end of a site-local interval written `yyyy-MM-ddTstart/end`, never before its
    /// start (see [`site_interval_end`]).
    SiteTimeEnd(TimeOut),
    /// Line breaks (and the blanks around them) become one space: for HL7 fields whose
    /// type (ST, XPN, ...) allows no line break.
    SingleLine,
    /// At most this many characters once HL7-escaped, cut with `…` (see [`fit_hl7_length`]).
    Hl7MaxLength(usize),
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
    "site_time_end",
    "single_line",
    "hl7_max_length",
];

/// Why a filter failed; the rule adds where. Only `Unmapped` holds the value (for the
/// offline tools), and no `Display` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// `required` found nothing.
    Required,
    /// A table with policy `error` did not have the value.
    Unmapped {
        /// The table.
        table: String,
        /// The value, for the offline tools only (see [`super::MapError::Unmapped`]).
        value: String,
    },
    /// The value had the wrong form.
    Invalid(String),
}

/// What filters need besides the value.
pub struct FilterEnv<'a, 'e> {
    /// Code tables of the mapping.
    pub tables: &'a [Table],
    /// The site's zone, when the input has one.
    pub zone: Option<&'e TimeZone>,
    /// Delimiters of the inbound HL7 message.
    pub delimiters: Delimiters,
    /// Values a table did not have: (table index, value), in the order seen.
    pub misses: &'e mut Vec<(u32, Cow<'a, str>)>,
}

/// Applies `f` to `v`.
pub fn apply<'a>(
    f: &Filter,
    v: Val<'a>,
    env: &mut FilterEnv<'a, '_>,
) -> Result<Val<'a>, FilterError> {
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
                Val::One(Cow::Owned(d.clone()))
            }
        }
        Filter::Join(sep) => match v {
            Val::Many(items) => Val::One(Cow::Owned(items.join(sep.as_str()))),
            other => other,
        },
        Filter::Split(sep) => match v {
            Val::One(s) => Val::Many(
                s.split(sep.as_str())
                    .map(|x| Cow::Owned(x.trim().to_string()))
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
                .min_by_key(|(i, s)| {
                    (
                        order
                            .iter()
                            .position(|o| o == s.as_ref())
                            .unwrap_or(order.len()),
                        *i,
                    )
                })
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

/// `s` with `f` applied to its text: borrowed stays borrowed, owned is cut in place.
fn narrow<'a>(s: Cow<'a, str>, f: impl Fn(&str) -> &str) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(f(b)),
        Cow::Owned(o) => {
            let t = f(&o);
            if t.len() == o.len() {
                Cow::Owned(o)
            } else {
                Cow::Owned(t.to_string())
            }
        }
    }
}

fn one<'a>(
    f: &Filter,
    s: Cow<'a, str>,
    env: &mut FilterEnv<'a, '_>,
) -> Result<Cow<'a, str>, FilterError> {
    Ok(match f {
        Filter::Trim => narrow(s, str::trim),
        Filter::Upper if is_upper(&s) => s,
        Filter::Upper => Cow::Owned(s.to_uppercase()),
        Filter::Lower if is_lower(&s) => s,
        Filter::Lower => Cow::Owned(s.to_lowercase()),
        Filter::Prefix(p) if !s.is_empty() => Cow::Owned(format!("{p}{s}")),
        Filter::Suffix(p) if !s.is_empty() => Cow::Owned(format!("{s}{p}")),
        Filter::Prefix(_) | Filter::Suffix(_) => s,
        Filter::Table(i) => {
            let tables = env.tables;
            let t = &tables[*i];
            if s.is_empty() {
                return Ok(s);
            }
            match t.get(&s) {
                Some(v) => Cow::Borrowed(v),
                None => {
                    let out = match t.policy {
                        Policy::PassThrough => s.clone(),
                        Policy::Default => Cow::Borrowed(t.default.as_deref().unwrap_or_default()),
                        Policy::Error => {
                            let value = s.to_string();
                            env.misses.push((*i as u32, s));
                            return Err(FilterError::Unmapped {
                                table: t.name.clone(),
                                value,
                            });
                        }
                    };
                    env.misses.push((*i as u32, s));
                    out
                }
            }
        }
        Filter::SingleLine if !has_line_break(&s) => s,
        Filter::Hl7MaxLength(max) if hl7_length(&s) <= *max => s,
        other => Cow::Owned(owned(other, &s, env)?),
    })
}

/// Whether `s` holds a character `single_line` removes.
fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n', '\u{2028}', '\u{2029}', '\u{85}'])
}

/// Characters of `s` once HL7-escaped with the default delimiters (line breaks as hex).
fn hl7_length(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '|' | '^' | '~' | '\\' | '&' => 3,
            '\r' | '\n' => 5,
            _ => 1,
        })
        .sum()
}

fn owned(f: &Filter, s: &str, env: &FilterEnv<'_, '_>) -> Result<String, FilterError> {
    Ok(match f {
        Filter::SiteTime(out) => {
            if s.is_empty() {
                return Ok(String::new());
            }
            let zone = env.zone.ok_or_else(no_zone)?;
            let z = local_to_zoned(s, zone)?;
            format_time(&z, *out)
        }
        Filter::Instant(out) => {
            if s.is_empty() {
                return Ok(String::new());
            }
            let ts = parse_instant(s)?;
            let zone = match out {
                TimeOut::Instant => TimeZone::UTC,
                _ => env.zone.cloned().unwrap_or(TimeZone::UTC),
            };
            format_time(&ts.to_zoned_datetime(zone), *out)
        }
        Filter::Hl7Time(out) => {
            if s.is_empty() {
                return Ok(String::new());
            }
            let z = parse_hl7_ts(s, env.zone)?;
            format_time(&z, *out)
        }
        Filter::Date(out) => {
            if s.is_empty() {
                return Ok(String::new());
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
            let mut out_s = String::with_capacity(10);
            let (y, m, dd) = (d.year(), d.month(), d.day());
            match out {
                TimeOut::Hl7Date | TimeOut::Hl7 => {
                    push_num(&mut out_s, i64::from(y), 4);
                    push_num(&mut out_s, i64::from(m), 2);
                    push_num(&mut out_s, i64::from(dd), 2);
                }
                _ => {
                    push_num(&mut out_s, i64::from(y), 4);
                    out_s.push('-');
                    push_num(&mut out_s, i64::from(m), 2);
                    out_s.push('-');
                    push_num(&mut out_s, i64::from(dd), 2);
                }
            }
            out_s
        }
        Filter::Name(part) => name_part(s, *part),
        Filter::SiteTimeEnd(out) => {
            if s.is_empty() {
                return Ok(String::new());
            }
            let zone = env.zone.ok_or_else(no_zone)?;
            match site_interval_end(s, zone)? {
                Some(z) => format_time(&z, *out),
                None => String::new(),
            }
        }
        Filter::SingleLine => single_line(s),
        Filter::Hl7MaxLength(max) => fit_hl7_length(s, *max),
        Filter::Hl7Name(kind) => hl7_name(s, *kind, &env.delimiters),
        Filter::Base64Decode => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim().as_bytes())
                .map_err(|_| FilterError::Invalid("not valid base64".into()))?;
            String::from_utf8(bytes)
                .map_err(|_| FilterError::Invalid("base64 content is not UTF-8 text".into()))?
        }
        Filter::Trim
        | Filter::Upper
        | Filter::Lower
        | Filter::Prefix(_)
        | Filter::Suffix(_)
        | Filter::Table(_)
        | Filter::Required
        | Filter::Default(_)
        | Filter::Join(_)
        | Filter::Split(_)
        | Filter::First
        | Filter::Rank(_) => unreachable!("handled by `one` or `apply`"),
    })
}

/// Appends `n` with at least `width` digits (a sign first when negative).
fn push_num(out: &mut String, n: i64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    while v > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let digits = (buf.len() - i).max(width);
    if n < 0 {
        out.push('-');
    }
    for &b in &buf[buf.len() - digits..] {
        out.push(b as char);
    }
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

/// A time in one of the filters' outputs. Written digit by digit: strftime parses its
/// format on every call, and a mapping formats several times per message.
pub fn format_time(z: &ZonedDateTime, out: TimeOut) -> String {
    if out == TimeOut::Instant {
        return z.timestamp().to_string();
    }
    let mut s = String::with_capacity(25);
    let dt = z.datetime();
    let (y, mo, d) = (
        i64::from(dt.year()),
        i64::from(dt.month()),
        i64::from(dt.day()),
    );
    let (h, mi, se) = (
        i64::from(dt.hour()),
        i64::from(dt.minute()),
        i64::from(dt.second()),
    );
    let off = z.offset().seconds();
    let push_offset = |s: &mut String, colon: bool| {
        s.push(if off < 0 { '-' } else { '+' });
        let a = i64::from(off.unsigned_abs());
        push_num(s, a / 3600, 2);
        if colon {
            s.push(':');
        }
        push_num(s, a % 3600 / 60, 2);
    };
    match out {
        TimeOut::Offset => {
            push_num(&mut s, y, 4);
            s.push('-');
            push_num(&mut s, mo, 2);
            s.push('-');
            push_num(&mut s, d, 2);
            s.push('T');
            push_num(&mut s, h, 2);
            s.push(':');
            push_num(&mut s, mi, 2);
            s.push(':');
            push_num(&mut s, se, 2);
            push_offset(&mut s, true);
        }
        TimeOut::Hl7 => {
            for (v, w) in [(y, 4), (mo, 2), (d, 2), (h, 2), (mi, 2), (se, 2)] {
                push_num(&mut s, v, w);
            }
            push_offset(&mut s, false);
        }
        TimeOut::Date => {
            push_num(&mut s, y, 4);
            s.push('-');
            push_num(&mut s, mo, 2);
            s.push('-');
            push_num(&mut s, d, 2);
        }
        TimeOut::Hl7Date | TimeOut::Instant => {
            push_num(&mut s, y, 4);
            push_num(&mut s, mo, 2);
            push_num(&mut s, d, 2);
        }
    }
    s
}

fn name_part(s: &str, part: NamePart) -> String {
    let n = super::names::parse(s);
    match part {
        NamePart::Family => n.family.unwrap_or_default(),
        NamePart::Given => n.given.first().cloned().unwrap_or_default(),
        NamePart::Middle => n.given.get(1..).map(|m| m.join(" ")).unwrap_or_default(),
        NamePart::Prefix => n.prefix.join(" "),
        NamePart::Suffix => n.suffix.unwrap_or_default(),
        NamePart::Text => n.text(),
    }
}

/// The end instant of a site-local interval `yyyy-MM-ddTHH:mm[:ss]/HH:mm[:ss]` (start
/// `/` end on the same date; the start may be empty). `None` when the end is empty.
///
/// An end is never before its start: an end clock time earlier than the start's is on
/// the next day (an appointment across midnight), and when a start in a DST gap was
/// shifted forward to or past the end, the end keeps the booked length (wall-clock end
/// minus wall-clock start) rather than landing on or before the shifted start.
pub fn site_interval_end(s: &str, zone: &TimeZone) -> Result<Option<ZonedDateTime>, FilterError> {
    let bad = || {
        FilterError::Invalid(
            "expected a site-local interval yyyy-MM-ddTstart/end (HH:mm[:ss] each)".into(),
        )
    };
    let (start_text, end_time) = s.trim().split_once('/').ok_or_else(bad)?;
    let end_time = end_time.trim();
    if end_time.is_empty() {
        return Ok(None);
    }
    let start_text = start_text.trim().replacen(' ', "T", 1);
    let (date, start_time) = start_text.split_once('T').unwrap_or((&start_text, ""));
    let date: jiff::civil::Date = date.trim().parse().map_err(|_| bad())?;
    let end_clock: jiff::civil::Time = end_time.parse().map_err(|_| bad())?;
    let start_clock = match start_time.trim() {
        "" => None,
        t => Some(t.parse::<jiff::civil::Time>().map_err(|_| bad())?),
    };
    let zoned = |dt: DateTime| {
        zone.to_ambiguous_zoned_datetime(dt)
            .compatible()
            .map_err(|_| FilterError::Invalid("local time out of range".into()))
    };
    let Some(start_clock) = start_clock else {
        return zoned(date.to_datetime(end_clock)).map(Some);
    };
    let local_start = date.to_datetime(start_clock);
    let mut local_end = date.to_datetime(end_clock);
    if local_end < local_start {
        local_end = local_end
            .checked_add(jiff::Span::new().days(1))
            .map_err(|_| bad())?;
    }
    let start = zoned(local_start)?;
    let end = zoned(local_end)?;
    if end.timestamp() > start.timestamp() || local_end == local_start {
        return Ok(Some(end));
    }
    // The start fell in a gap and moved forward to or past the end: keep the booked length.
    let booked = local_start.until(local_end).map_err(|_| bad())?;
    start
        .checked_add(booked)
        .map(Some)
        .map_err(|_| FilterError::Invalid("local time out of range".into()))
}

/// One line: every run of line breaks, with the blanks around it, becomes one space.
pub fn single_line(s: &str) -> String {
    if !s.contains(['\r', '\n', '\u{2028}', '\u{2029}', '\u{85}']) {
        return s.to_string();
    }
    s.split(['\r', '\n', '\u{2028}', '\u{2029}', '\u{85}'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` cut so that, HL7-escaped with the default delimiters, it takes at most `max`
/// characters; a cut text ends with `…`. HL7 v2 field lengths count the characters of the
/// field as sent, escapes included.
pub fn fit_hl7_length(s: &str, max: usize) -> String {
    let d = crate::hl7::Delimiters::default();
    let width = |c: char| crate::hl7::escape::escaped_width(c, &d);
    if s.chars().map(width).sum::<usize>() <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 1; // the `…`
    for c in s.chars() {
        let w = width(c);
        if used + w > max {
            break;
        }
        used += w;
        out.push(c);
    }
    let mut out = out.trim_end().to_string();
    out.push('…');
    out
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

    fn env<'a, 'e>(
        zone: Option<&'e TimeZone>,
        un: &'e mut Vec<(u32, Cow<'a, str>)>,
        tables: &'a [Table],
    ) -> FilterEnv<'a, 'e> {
        FilterEnv {
            tables,
            zone,
            delimiters: Delimiters::default(),
            misses: un,
        }
    }

    fn run(f: Filter, s: &str, zone: Option<&TimeZone>) -> Result<Val<'static>, FilterError> {
        let mut un = Vec::new();
        apply(
            &f,
            Val::One(Cow::Owned(s.to_string())),
            &mut env(zone, &mut un, &[]),
        )
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
    fn interval_ends_never_precede_their_start() {
        let syd = jiff::tz::db().get("Australia/Sydney").unwrap();
        let end = |s: &str| {
            run(Filter::SiteTimeEnd(TimeOut::Hl7), s, Some(&syd)).map(|v| match v {
                Val::One(x) => x.into_owned(),
                other => format!("{other:?}"),
            })
        };
        assert_eq!(
            end("2026-11-20T09:15:00/09:45:00").unwrap(),
            "20261120094500+1100"
        );
        // Start in the gap (02:30 → 03:30+11:00): the end keeps the booked 40 minutes.
        assert_eq!(
            end("2026-10-04T02:30:00/03:10:00").unwrap(),
            "20261004041000+1100"
        );
        // Start in the gap, end at the shifted start: the booked hour, not zero minutes.
        assert_eq!(
            end("2026-10-04T02:30:00/03:30:00").unwrap(),
            "20261004043000+1100"
        );
        // Start in the gap, end well after it: converted as it is.
        assert_eq!(
            end("2026-10-04T02:30:00/04:00:00").unwrap(),
            "20261004040000+1100"
        );
        // Overlap: both take the first occurrence.
        assert_eq!(
            end("2026-04-05T02:30:00/02:50:00").unwrap(),
            "20260405025000+1100"
        );
        // An end clock time before the start: the next day.
        assert_eq!(
            end("2026-11-20T23:30:00/00:15:00").unwrap(),
            "20261121001500+1100"
        );
        // No start: the end alone; no end: nothing.
        assert_eq!(end("2026-11-20T/09:45:00").unwrap(), "20261120094500+1100");
        assert_eq!(end("2026-11-20T09:15:00/").unwrap(), "");
        assert!(end("2026-11-20T09:15:00").is_err());
    }

    #[test]
    fn single_line_and_hl7_length() {
        assert_eq!(
            single_line("Line one\r\nLine two \n\n three"),
            "Line one Line two three"
        );
        assert_eq!(single_line("no breaks"), "no breaks");
        assert_eq!(fit_hl7_length("short", 300), "short");
        let long = "a|b".repeat(200);
        let cut = fit_hl7_length(&long, 300);
        let escaped = crate::hl7::escape::escape(&cut, &Delimiters::default());
        assert!(
            escaped.chars().count() <= 300,
            "{}",
            escaped.chars().count()
        );
        assert!(escaped.chars().count() >= 295);
        assert!(cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')));
        let unicode = "é".repeat(400);
        assert_eq!(fit_hl7_length(&unicode, 300).chars().count(), 300);
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
            run(Filter::Name(NamePart::Family), "Māui Te Rangi", None).unwrap(),
            Val::One("Te Rangi".into())
        );
        assert_eq!(
            run(Filter::Name(NamePart::Given), "SMITH, John", None).unwrap(),
            Val::One("John".into())
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
            map: [("urgent".to_string(), "urgent".to_string())]
                .into_iter()
                .collect(),
            ignore_case: true,
            policy,
            default: Some("routine".into()),
            values_at: None,
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
        // Keys that are not short ASCII are lower-cased the general way.
        let long = "a".repeat(40);
        let mut t = mk(Policy::Error);
        t.map.insert("über".into(), "over".into());
        t.map.insert(long.clone(), "long".into());
        assert_eq!(t.get("ÜBER"), Some("over"));
        assert_eq!(t.get(&long.to_uppercase()), Some("long"));
        assert_eq!(t.get("URGENT"), Some("urgent"));
        assert_eq!(t.get("URGENTLY"), None);
        assert_eq!(
            apply(&Filter::Table(1), Val::One("soon".into()), &mut e).unwrap(),
            Val::One("soon".into())
        );
        assert_eq!(
            apply(&Filter::Table(2), Val::One("soon".into()), &mut e),
            Err(FilterError::Unmapped {
                table: "priority".into(),
                value: "soon".into()
            })
        );
        assert_eq!(un.len(), 3);
    }

    #[test]
    fn unchanged_values_stay_borrowed() {
        let mut un = Vec::new();
        let mut e = env(None, &mut un, &[]);
        for f in [
            Filter::Trim,
            Filter::Upper,
            Filter::SingleLine,
            Filter::Hl7MaxLength(300),
        ] {
            let v = apply(&f, Val::One(Cow::Borrowed("ABC DEF")), &mut e).unwrap();
            assert!(
                matches!(v, Val::One(Cow::Borrowed("ABC DEF"))),
                "{f:?}: {v:?}"
            );
        }
        let v = apply(&Filter::Trim, Val::One(Cow::Borrowed("  x ")), &mut e).unwrap();
        assert!(matches!(v, Val::One(Cow::Borrowed("x"))));
        let v = apply(&Filter::Upper, Val::One(Cow::Borrowed("ct")), &mut e).unwrap();
        assert_eq!(v, Val::One("CT".into()));
        assert_eq!(
            format_time(
                &"2026-11-20T09:15:00+11:00[Australia/Sydney]"
                    .parse::<ZonedDateTime>()
                    .unwrap(),
                TimeOut::Hl7
            ),
            "20261120091500+1100"
        );
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
        let statuses =
            |v: &[&'static str]| Val::Many(v.iter().map(|s| Cow::Borrowed(*s)).collect());
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
            apply(&Filter::Required, Val::One(Cow::Borrowed("")), &mut e),
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
