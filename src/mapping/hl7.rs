//! HL7 v2 targets: built-in field counts per segment and version, the ORM^O01 segment
//! order, and target positions such as `PID-5.1`, `OBR-4.2`, `PID-3[*].1`.

/// Versions we know field counts for.
pub const VERSIONS: &[&str] = &["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"];

/// Number of fields of `segment` in `version`; `None` when the segment is not in the
/// table or does not exist in that version (TQ1 before 2.5).
pub fn field_count(segment: &str, version: &str) -> Option<u16> {
    // Index: 2.3, 2.3.1, 2.4, 2.5, 2.5.1, 2.6 (0 = not in that version).
    let counts: [u16; 6] = match segment {
        "MSH" => [19, 19, 21, 21, 21, 25],
        "PID" => [30, 30, 38, 39, 39, 39],
        "PV1" => [52, 52, 52, 52, 52, 52],
        "ORC" => [19, 19, 24, 31, 31, 31],
        "OBR" => [43, 43, 47, 50, 50, 50],
        "TQ1" => [0, 0, 0, 14, 14, 14],
        "NTE" => [3, 3, 4, 4, 4, 4],
        "OBX" => [17, 17, 19, 25, 25, 25],
        "MSA" => [6, 6, 6, 6, 6, 6],
        "ERR" => [1, 1, 1, 12, 12, 12],
        _ => return None,
    };
    let i = VERSIONS.iter().position(|v| *v == version)?;
    Some(counts[i]).filter(|&n| n > 0)
}

/// The most fields `segment` has in any known version (for inbound paths, whose version
/// is only known per message).
pub fn max_field_count(segment: &str) -> Option<u16> {
    VERSIONS
        .iter()
        .filter_map(|v| field_count(segment, v))
        .max()
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

/// Parses a target like `PID-5.1` or `PID-3[*].1` and checks it against `segment` and the
/// version's field count. The error is `(message, hint)`.
pub fn resolve(text: &str, segment: &str, version: &str) -> Result<Hl7Target, (String, String)> {
    let t = text.trim();
    let bad = |m: String| {
        (
            m,
            "write SEG-field[.component[.sub-component]], e.g. `PID-5.1`".to_string(),
        )
    };
    if t.len() < 5 || &t[..3] != segment || t.as_bytes()[3] != b'-' {
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
    for slot in nums.iter_mut() {
        if let Some(r) = rest.strip_prefix('.') {
            let e = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            *slot = r[..e]
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("target `{t}`: component numbers start at 1")))?;
            rest = &r[e..];
        }
    }
    if !rest.is_empty() || field == 0 {
        return Err(bad(format!("target `{t}` is not a valid position")));
    }
    match field_count(segment, version) {
        None => {
            return Err((
                format!("segment {segment} is not known for HL7 v{version}"),
                format!(
                    "supported: MSH PID PV1 ORC OBR NTE OBX MSA ERR, and TQ1 from v2.5; known versions {}",
                    VERSIONS.join(", ")
                ),
            ));
        }
        Some(n) if field > n => {
            return Err((
                format!(
                    "{segment}-{field} does not exist in HL7 v{version} ({segment} has {n} fields)"
                ),
                format!("use a field from {segment}-1 to {segment}-{n}, or change `version`"),
            ));
        }
        Some(_) => {}
    }
    if segment == "MSH" && field <= 2 {
        return Err((
            format!("{t}: MSH-1 and MSH-2 are the delimiters"),
            "they are always `|^~\\&`; remove this rule".into(),
        ));
    }
    Ok(Hl7Target {
        segment: segment.to_string(),
        field,
        rep,
        component: nums[0],
        subcomponent: nums[1],
        text: t.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = resolve("PID-5.1", "PID", "2.5.1").unwrap();
        assert_eq!((t.field, t.component, t.rep), (5, 1, Rep::Nth(1)));
        let t = resolve("PID-3[*].1", "PID", "2.5.1").unwrap();
        assert_eq!(t.rep, Rep::Each);
        let (m, h) = resolve("OBR-51", "OBR", "2.5.1").unwrap_err();
        assert!(
            m.contains("does not exist") && h.contains("OBR-50"),
            "{m} {h}"
        );
        assert!(resolve("OBR-44", "OBR", "2.3").is_err());
        assert!(resolve("TQ1-7", "TQ1", "2.4").is_err());
        assert!(resolve("TQ1-7", "TQ1", "2.5.1").is_ok());
        assert!(resolve("PID-5", "OBR", "2.5.1").is_err());
        assert!(resolve("NTE-4", "NTE", "2.3").is_err());
        assert!(resolve("MSH-2", "MSH", "2.5.1").is_err());
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
