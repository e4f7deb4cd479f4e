//! HL7 v2 targets: built-in field counts per segment and version, the ORM^O01 segment
//! order, and target positions such as `PID-5.1`, `OBR-4.2`, `PID-3[*].1`.

/// Versions we know the segments of.
pub const VERSIONS: &[&str] = &["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"];

/// Field datatypes of `segment` in `version`; `None` when the segment is not in the
/// built-in tables or not in that version (TQ1 before 2.5).
pub fn fields(segment: &str, version: &str) -> Option<&'static [&'static str]> {
    let v = VERSIONS.iter().position(|x| *x == version)?;
    super::hl7_tables::SEGMENTS
        .iter()
        .find(|(id, _)| *id == segment)
        .and_then(|(_, per)| per[v])
}

/// Number of fields of `segment` in `version`; `None` when the segment is not in the
/// table or does not exist in that version.
pub fn field_count(segment: &str, version: &str) -> Option<u16> {
    fields(segment, version).map(|f| f.len() as u16)
}

/// The segments the built-in tables know, for messages.
pub fn known_segments() -> Vec<&'static str> {
    super::hl7_tables::SEGMENTS
        .iter()
        .map(|(id, _)| *id)
        .collect()
}

/// The most fields `segment` has in any known version (for inbound paths, whose version
/// is only known per message).
pub fn max_field_count(segment: &str) -> Option<u16> {
    VERSIONS
        .iter()
        .filter_map(|v| field_count(segment, v))
        .max()
}

/// Datatypes with no components.
const PRIMITIVES: &[&str] = &[
    "ST", "TX", "FT", "ID", "IS", "NM", "SI", "DT", "DTM", "TM", "TN", "GTS", "SNM", "varies",
];

/// The component datatypes of `datatype` in `version` (in any version when it is not used
/// by the built-in segments in that one); empty for a primitive; `None` for a datatype the
/// tables do not know.
pub fn components(datatype: &str, version: &str) -> Option<&'static [&'static str]> {
    if PRIMITIVES.contains(&datatype) {
        return Some(&[]);
    }
    let (_, per) = super::hl7_tables::DATATYPES
        .iter()
        .find(|(id, _)| *id == datatype)?;
    let v = VERSIONS.iter().position(|x| *x == version);
    v.and_then(|v| per[v])
        .or_else(|| per.iter().rev().find_map(|x| *x))
}

/// Whether `datatype` is one the tables know (for declared fields).
pub fn is_datatype(datatype: &str) -> bool {
    components(datatype, "2.5.1").is_some()
}

/// Most characters a field may hold as sent (escapes count), for the fields whose length
/// the bridge's own rules rely on: MSH-7 and MSH-10 (generated), OBR-13 (cut by
/// `hl7_max_length` to fit), and the one- and two-letter codes of PID-8, ORC-1, ORC-5.
pub fn max_length(segment: &str, field: u16) -> Option<usize> {
    Some(match (segment, field) {
        ("MSH", 7) => 26,
        ("MSH", 10) => 20,
        ("OBR", 13) => 300,
        ("PID", 8) => 1,
        ("ORC", 1) | ("ORC", 5) => 2,
        _ => return None,
    })
}

/// Segment order of ORM^O01 (flattened; groups repeat as a whole) and the ids it requires.
/// ORM^O01 has no TQ1 in any version (TQ1 came with 2.5 for OMG/OMI; ORM keeps ORC-7 and
/// OBR-27 for timing), so a TQ1 in an ORM mapping is refused.
pub fn structure(message: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    match message {
        "ORM^O01" => Some((
            &[
                "MSH", "NTE", "PID", "PD1", "NTE", "PV1", "PV2", "IN1", "GT1", "AL1", "ORC", "OBR",
                "NTE", "CTD", "DG1", "OBX", "NTE", "FT1", "CTI", "BLG",
            ],
            &["MSH", "PID", "ORC", "OBR"],
        )),
        _ => None,
    }
}

/// Checks that `ids` follow `order` (each id at or after the position of the one before;
/// an ORC after OBR starts a new order group). Returns the first offending index.
pub fn check_order(ids: &[&str], order: &[&str]) -> Result<(), usize> {
    let mut at = 0usize;
    for (k, id) in ids.iter().enumerate() {
        if let Some(p) = order[at..].iter().position(|o| o == id) {
            at += p;
            continue;
        }
        // A new ORDER group may start again at ORC.
        let orc = order.iter().position(|o| *o == "ORC");
        match (orc, order.iter().position(|o| o == id)) {
            (Some(orc), Some(p)) if p >= orc && at > orc => at = p,
            _ => return Err(k),
        }
    }
    Ok(())
}

/// Repetition of a target: fixed, or the current `for_each` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rep {
    /// 1-based repetition.
    Nth(u16),
    /// `[*]`: one repetition per item.
    Each,
}

/// A checked HL7 target position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Target {
    /// Segment id.
    pub segment: String,
    /// Field number.
    pub field: u16,
    /// Repetition.
    pub rep: Rep,
    /// Component (1 when not written).
    pub component: u16,
    /// Sub-component (1 when not written).
    pub subcomponent: u16,
    /// As written.
    pub text: String,
}

/// The fields a mapping may write in one segment: the standard ones of its version, and
/// the ones the mapping declares (`custom_segments`, `custom_fields`).
#[derive(Debug, Clone, Copy)]
pub struct SegmentFields<'a> {
    /// Segment id.
    pub segment: &'a str,
    /// HL7 version.
    pub version: &'a str,
    /// Declared fields of this segment (a custom segment's, or extra fields of a standard
    /// one), by number.
    pub declared: &'a [super::ir::FieldDecl],
    /// Whether the segment is a declared custom segment.
    pub custom: bool,
}

impl SegmentFields<'_> {
    /// The datatype of `field`, and the number of fields the segment has.
    fn datatype(&self, field: u16) -> Result<&str, (String, String)> {
        let (seg, version) = (self.segment, self.version);
        if let Some(d) = self.declared.iter().find(|d| d.field == field) {
            return Ok(&d.datatype);
        }
        if self.custom {
            let known: Vec<String> = self
                .declared
                .iter()
                .map(|d| format!("{seg}-{}", d.field))
                .collect();
            return Err((
                format!("{seg}-{field} is not declared for the custom segment {seg}"),
                if known.is_empty() {
                    format!("declare it under `custom_segments` (segment {seg}, `fields`)")
                } else {
                    format!(
                        "declared: {}; add it under `custom_segments` (segment {seg}, `fields`)",
                        known.join(", ")
                    )
                },
            ));
        }
        let Some(types) = fields(seg, version) else {
            return Err((
                format!("segment {seg} is not known for HL7 v{version}"),
                format!(
                    "the built-in tables know {} (TQ1 from v2.5); declare a Z-segment under `custom_segments`",
                    known_segments().join(" ")
                ),
            ));
        };
        match types.get(usize::from(field) - 1) {
            Some(t) => Ok(t),
            None => {
                let n = types.len();
                Err((
                    format!(
                        "{seg}-{field} does not exist in HL7 v{version} ({seg} has {n} fields)"
                    ),
                    format!(
                        "use a field from {seg}-1 to {seg}-{n}, change `version`, or declare the field under `custom_fields`"
                    ),
                ))
            }
        }
    }
}

/// Parses a target like `PID-5.1` or `PID-3[*].1` and checks it against the segment's
/// fields: the field exists in the version (or is declared), and the component and
/// sub-component exist in its datatype (`PID-8.3` is refused: PID-8 is IS, one value;
/// `PID-3.99` too: CX has 10 components). The error is `(message, hint)`.
pub fn resolve(text: &str, seg: SegmentFields<'_>) -> Result<Hl7Target, (String, String)> {
    let segment = seg.segment;
    let version = seg.version;
    let t = text.trim();
    let bad = |m: String| {
        (
            m,
            "write SEG-field[.component[.sub-component]], e.g. `PID-5.1`".to_string(),
        )
    };
    if t.len() < 5 || !t.is_char_boundary(3) || &t[..3] != segment || t.as_bytes()[3] != b'-' {
        return Err((
            format!("target `{t}` is not a position in the {segment} segment"),
            format!("targets of this segment start with `{segment}-`"),
        ));
    }
    let rest = &t[4..];
    let fend = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let field: u16 = rest[..fend]
        .parse()
        .map_err(|_| bad(format!("target `{t}`: field number missing")))?;
    let mut rest = &rest[fend..];
    let mut rep = Rep::Nth(1);
    if let Some(r) = rest.strip_prefix('[') {
        let close = r
            .find(']')
            .ok_or_else(|| bad(format!("target `{t}`: `[` without `]`")))?;
        rep = match &r[..close] {
            "*" => Rep::Each,
            n => Rep::Nth(n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                bad(format!(
                    "target `{t}`: repetition must be a number ≥ 1 or `*`"
                ))
            })?),
        };
        rest = &r[close + 1..];
    }
    let mut nums = [1u16, 1u16];
    let mut written = [false, false];
    for (slot, w) in nums.iter_mut().zip(written.iter_mut()) {
        if let Some(r) = rest.strip_prefix('.') {
            let e = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            *slot = r[..e]
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("target `{t}`: component numbers start at 1")))?;
            *w = true;
            rest = &r[e..];
        }
    }
    if !rest.is_empty() || field == 0 {
        return Err(bad(format!("target `{t}` is not a valid position")));
    }
    let datatype = seg.datatype(field)?;
    if segment == "MSH" && field <= 2 {
        return Err((
            format!("{t}: MSH-1 and MSH-2 are the delimiters"),
            "they are always `|^~\\&`; remove this rule".into(),
        ));
    }
    check_components(t, segment, field, datatype, version, nums, written)?;
    Ok(Hl7Target {
        segment: segment.to_string(),
        field,
        rep,
        component: nums[0],
        subcomponent: nums[1],
        text: t.to_string(),
    })
}

/// The component and sub-component of a target exist in the field's datatype.
fn check_components(
    t: &str,
    segment: &str,
    field: u16,
    datatype: &str,
    version: &str,
    [c, s]: [u16; 2],
    written: [bool; 2],
) -> Result<(), (String, String)> {
    if datatype == "varies" {
        return Ok(());
    }
    let Some(comps) = components(datatype, version) else {
        return Ok(());
    };
    let whole = format!("{segment}-{field}");
    if comps.is_empty() {
        if c > 1 || s > 1 {
            return Err((
                format!("{t}: {whole} is {datatype}, a single value without components"),
                format!("write `{whole}`"),
            ));
        }
        return Ok(());
    }
    if usize::from(c) > comps.len() {
        return Err((
            format!(
                "{t}: {whole} is {datatype}, which has {} components in HL7 v{version}",
                comps.len()
            ),
            format!("use a component from {whole}.1 to {whole}.{}", comps.len()),
        ));
    }
    let sub_type = comps[usize::from(c) - 1];
    match components(sub_type, version) {
        Some(subs) if subs.is_empty() && s > 1 => Err((
            format!(
                "{t}: component {c} of {whole} ({datatype}) is {sub_type}, a single value without sub-components"
            ),
            format!("write `{whole}.{c}`"),
        )),
        Some(subs) if !subs.is_empty() && usize::from(s) > subs.len() && written[1] => Err((
            format!(
                "{t}: component {c} of {whole} ({datatype}) is {sub_type}, which has {} sub-components",
                subs.len()
            ),
            format!(
                "use a sub-component from {whole}.{c}.1 to {whole}.{c}.{}",
                subs.len()
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let std = |segment, version| SegmentFields {
            segment,
            version,
            declared: &[],
            custom: false,
        };
        let r = |t: &str, s, v| resolve(t, std(s, v));
        let t = r("PID-5.1", "PID", "2.5.1").unwrap();
        assert_eq!((t.field, t.component, t.rep), (5, 1, Rep::Nth(1)));
        let t = r("PID-3[*].1", "PID", "2.5.1").unwrap();
        assert_eq!(t.rep, Rep::Each);
        let (m, h) = r("OBR-51", "OBR", "2.5.1").unwrap_err();
        assert!(
            m.contains("does not exist") && h.contains("OBR-50"),
            "{m} {h}"
        );
        assert!(r("OBR-44", "OBR", "2.3").is_err());
        assert!(r("TQ1-7", "TQ1", "2.4").is_err());
        assert!(r("TQ1-7", "TQ1", "2.5.1").is_ok());
        assert!(r("PID-5", "OBR", "2.5.1").is_err());
        assert!(r("NTE-4", "NTE", "2.3").is_err());
        assert!(r("MSH-2", "MSH", "2.5.1").is_err());
    }

    #[test]
    fn components_are_checked_against_the_datatype() {
        let std = |segment| SegmentFields {
            segment,
            version: "2.5.1",
            declared: &[],
            custom: false,
        };
        let (m, _) = resolve("PID-8.3", std("PID")).unwrap_err();
        assert!(m.contains("PID-8 is IS, a single value"), "{m}");
        let (m, h) = resolve("PID-3.99", std("PID")).unwrap_err();
        assert!(m.contains("CX, which has 10 components"), "{m}");
        assert!(h.contains("PID-3.10"), "{h}");
        assert!(resolve("PID-8", std("PID")).is_ok());
        assert!(resolve("PID-8.1", std("PID")).is_ok());
        // OBR-32 is NDL, whose first component is a CNN of 11 sub-components.
        assert!(resolve("OBR-32.1.6", std("OBR")).is_ok());
        let (m, _) = resolve("OBR-32.1.12", std("OBR")).unwrap_err();
        assert!(m.contains("CNN, which has 11 sub-components"), "{m}");
        let (m, _) = resolve("PID-3.1.2", std("PID")).unwrap_err();
        assert!(m.contains("without sub-components"), "{m}");
        // ORC-7 (TQ) start is a TS: a DTM with a degree of precision.
        assert!(resolve("ORC-7.4", std("ORC")).is_ok());
        // OBX-5 varies: any component.
        assert!(resolve("OBX-5.7", std("OBX")).is_ok());
    }

    #[test]
    fn declared_fields() {
        let decl = [super::super::ir::FieldDecl {
            field: 1,
            name: "Study Instance UID".into(),
            datatype: "ST".into(),
            length: Some(64),
            required: false,
        }];
        let z = SegmentFields {
            segment: "ZDS",
            version: "2.5.1",
            declared: &decl,
            custom: true,
        };
        assert!(resolve("ZDS-1", z).is_ok());
        let (m, h) = resolve("ZDS-2", z).unwrap_err();
        assert!(m.contains("not declared") && h.contains("ZDS-1"), "{m} {h}");
        assert!(resolve("ZDS-1.2", z).is_err());
        let extra = [super::super::ir::FieldDecl {
            field: 40,
            name: "Site MRN".into(),
            datatype: "CX".into(),
            length: None,
            required: false,
        }];
        let pid = SegmentFields {
            segment: "PID",
            version: "2.5.1",
            declared: &extra,
            custom: false,
        };
        assert!(resolve("PID-40.1", pid).is_ok());
        assert!(resolve("PID-41", pid).is_err());
    }

    #[test]
    fn order() {
        let (o, _) = structure("ORM^O01").unwrap();
        assert!(check_order(&["MSH", "PID", "PV1", "ORC", "OBR", "NTE"], o).is_ok());
        assert!(check_order(&["MSH", "PID", "ORC", "TQ1", "OBR"], o).is_err());
        assert!(check_order(&["MSH", "PID", "ORC", "OBR", "ORC", "OBR"], o).is_ok());
        assert_eq!(check_order(&["MSH", "ORC", "PID"], o), Err(2));
    }
}
