//! Load-time checks on the codes a mapping sends: every LOINC code in a code table or a
//! constant must carry its right check digit, and a LOINC table that gives one code to
//! several keys is worth a second look (a modality-wide table once sent "XR Chest" for an
//! ankle). The table or rule that holds the code is named with its file position.

use std::collections::BTreeMap;

/// Whether `system` names LOINC, as an HL7 coding system (`LN`) or a FHIR system URI.
pub fn is_loinc_system(system: &str) -> bool {
    let s = system.trim();
    s.eq_ignore_ascii_case("LN") || s == "http://loinc.org"
}

/// Why a LOINC code is not valid; `Ok` for a valid one. Only the numeric codes of tests
/// and observations (`12345-6`) carry a check digit we verify; part, answer and group
/// codes (`LP…`, `LA…`, `LL…`, `LG…`) are left alone.
pub fn check_loinc(code: &str) -> Result<(), String> {
    let c = code.trim();
    let artefact = ["LA", "LP", "LG", "LL"]
        .iter()
        .find_map(|p| c.strip_prefix(p))
        .is_some_and(|rest| {
            rest.split_once('-').is_some_and(|(b, d)| {
                !b.is_empty()
                    && b.bytes().all(|x| x.is_ascii_digit())
                    && d.len() == 1
                    && d.bytes().all(|x| x.is_ascii_digit())
            })
        });
    if artefact {
        return Ok(());
    }
    let Some((body, check)) = c.split_once('-') else {
        return Err("a LOINC code is digits, a hyphen and a check digit, e.g. `36643-5`".into());
    };
    if body.is_empty()
        || body.len() > 7
        || !body.bytes().all(|b| b.is_ascii_digit())
        || check.len() != 1
        || !check.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("a LOINC code is digits, a hyphen and a check digit, e.g. `36643-5`".into());
    }
    let want = loinc_check_digit(body);
    if check.as_bytes()[0] - b'0' == want {
        Ok(())
    } else {
        Err(format!(
            "its check digit is wrong: `{body}-{want}` would be the code with a valid check digit, \
             which may well be another test; look the code up again"
        ))
    }
}

/// LOINC's mod 10 check digit of the digits before the hyphen (the Luhn scheme: from the
/// right, every other digit starting with the last is doubled and its digits added).
pub fn loinc_check_digit(body: &str) -> u8 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Codes that are the value of several keys not declared as `synonyms`: `(code, keys)`.
pub fn shared_codes(
    values: &[(String, String)],
    synonyms: &[Vec<String>],
    ignore_case: bool,
) -> Vec<(String, Vec<String>)> {
    let norm = |k: &str| {
        if ignore_case {
            k.trim().to_lowercase()
        } else {
            k.trim().to_string()
        }
    };
    let group_of = |k: &str| {
        let k = norm(k);
        synonyms.iter().position(|g| g.iter().any(|s| norm(s) == k))
    };
    let mut by_code: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in values {
        if !v.trim().is_empty() {
            by_code.entry(v.trim()).or_default().push(k);
        }
    }
    by_code
        .into_iter()
        .filter(|(_, keys)| {
            keys.len() > 1 && {
                let first = group_of(keys[0]);
                first.is_none() || keys.iter().any(|k| group_of(k) != first)
            }
        })
        .map(|(c, keys)| (c.to_string(), keys.iter().map(|k| k.to_string()).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits() {
        for ok in [
            "36643-5",
            "24627-2",
            "30799-1",
            "26175-0",
            "46347-1",
            "25045-6",
            "LP29684-5",
        ] {
            assert_eq!(check_loinc(ok), Ok(()), "{ok}");
        }
        let e = check_loinc("24532-1").unwrap_err();
        assert!(e.contains("24532-4"), "{e}");
        assert!(check_loinc("24532").is_err());
        assert!(check_loinc("CTPA").is_err());
        assert!(check_loinc("LPX-1").is_err());
        assert!(is_loinc_system("LN") && is_loinc_system("http://loinc.org"));
        assert!(!is_loinc_system("L"));
    }

    #[test]
    fn shared_codes_outside_synonyms_are_reported() {
        let v = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let table = v(&[
            ("MR", "25056-3"),
            ("MRI", "25056-3"),
            ("CT", "25056-3"),
            ("US", "25061-3"),
        ]);
        let syn = vec![vec!["MR".to_string(), "MRI".to_string()]];
        assert_eq!(
            shared_codes(&table, &syn, true),
            [(
                "25056-3".to_string(),
                vec!["MR".into(), "MRI".into(), "CT".into()]
            )]
        );
        let ok = v(&[("MR", "25056-3"), ("mri", "25056-3")]);
        assert!(shared_codes(&ok, &syn, true).is_empty());
        assert_eq!(shared_codes(&ok, &[], true).len(), 1);
    }
}
