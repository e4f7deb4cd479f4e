//! Bytes off the wire → text, before any HL7 parsing.
//!
//! Senders rarely say what character set they use, and many legacy systems send 8-bit
//! Latin-1 or Windows-1252 with MSH-18 empty. A reader that replaced every such byte with
//! U+FFFD would corrupt patient names and report text for good, and refusing the message
//! would lose the result, so the text is decoded in this order:
//!
//! 1. **Valid UTF-8** (a UTF-8 byte-order mark is dropped later by the reader) is read as
//!    UTF-8, whatever MSH-18 says: eight-bit text in another charset is almost never valid
//!    UTF-8 by accident. When MSH-18 names a single-byte charset and the text has
//!    non-ASCII characters, a warning says the declaration was not followed.
//! 2. **MSH-18 naming a charset** the bridge knows (HL7 table 0211: `8859/1`…`8859/9`,
//!    `8859/15`, `GB 18030-2000`, `BIG-5`, `KS X 1001`) decides. `8859/1` is read as
//!    Windows-1252 (its superset, as the WHATWG encoding standard does): the bytes 0x80–0x9F
//!    are C1 control codes in Latin-1, never text, and in practice mean `€`, `–`, `’`, ….
//! 3. **Otherwise** (no MSH-18, or one that says UTF-8/ASCII or names nothing known) the
//!    text is read as **Windows-1252**, and a warning says so. Every byte maps to a
//!    character (the five bytes Windows-1252 leaves undefined become the C1 controls of the
//!    same value), so nothing is ever replaced by U+FFFD and nothing is refused for this.
//!
//! Warnings name offsets and charsets, never text: they are safe to log.

use std::borrow::Cow;

use encoding_rs::Encoding;

/// The result of [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The text.
    pub text: Cow<'a, str>,
    /// The character set it was read in (an encoding_rs name, e.g. `UTF-8`, `windows-1252`).
    pub charset: &'static str,
    /// Why the text was not simply read as declared (no PHI).
    pub warning: Option<String>,
}

/// Decodes a message's bytes in the order of the module doc.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let declared = msh18(bytes);
    let declared_encoding = declared.as_deref().and_then(encoding_for);
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let warning = match (&declared, declared_encoding) {
                (Some(name), Some(enc)) if enc != encoding_rs::UTF_8 && !text.is_ascii() => {
                    Some(format!(
                        "MSH-18 declares {name} but the message is valid UTF-8 with non-ASCII \
                         characters; read as UTF-8"
                    ))
                }
                _ => None,
            };
            Decoded {
                text: Cow::Borrowed(text),
                charset: "UTF-8",
                warning,
            }
        }
        Err(e) => {
            let offset = e.valid_up_to();
            let (encoding, warning) = match declared_encoding {
                Some(enc) if enc != encoding_rs::UTF_8 => (enc, None),
                _ => {
                    let said = match &declared {
                        Some(name) => format!("MSH-18 says {name}"),
                        None => "MSH-18 names no character set".to_string(),
                    };
                    (
                        encoding_rs::WINDOWS_1252,
                        Some(format!(
                            "the message is not valid UTF-8 (first invalid byte at offset \
                             {offset}) and {said}; read as Windows-1252"
                        )),
                    )
                }
            };
            // Without BOM sniffing: a BOM was already ruled out by the UTF-8 check failing on
            // a single-byte charset, and must not switch the decoder to UTF-16.
            let (text, _) = encoding.decode_without_bom_handling(bytes);
            Decoded {
                text,
                charset: encoding.name(),
                warning,
            }
        }
    }
}

/// The first repetition of MSH-18, trimmed, when present: read from the raw bytes (the
/// header is ASCII in every charset HL7 allows for ER7).
fn msh18(bytes: &[u8]) -> Option<String> {
    let start = bytes.windows(3).position(|w| w == b"MSH")?;
    let line = &bytes[start..];
    let end = line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    let line = &line[..end];
    let field_sep = *line.get(3)?;
    let repetition = *line.get(5)?;
    // Split after `MSH`: part 1 is MSH-2, so MSH-n is part n - 1.
    let value = line[3..].split(|&b| b == field_sep).nth(17)?;
    let first = value.split(|&b| b == repetition).next()?;
    let text = std::str::from_utf8(first).ok()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The decoder for an HL7 table 0211 value, when the bridge has one.
fn encoding_for(name: &str) -> Option<&'static Encoding> {
    let upper = name.to_ascii_uppercase();
    let label = match upper.as_str() {
        "ASCII" | "UNICODE UTF-8" | "UNICODE" => "utf-8",
        "8859/1" => "windows-1252",
        "8859/2" => "iso-8859-2",
        "8859/3" => "iso-8859-3",
        "8859/4" => "iso-8859-4",
        "8859/5" => "iso-8859-5",
        "8859/6" => "iso-8859-6",
        "8859/7" => "iso-8859-7",
        "8859/8" => "iso-8859-8",
        "8859/9" => "windows-1254",
        "8859/15" => "iso-8859-15",
        "GB 18030-2000" => "gb18030",
        "BIG-5" => "big5",
        "KS X 1001" => "euc-kr",
        _ => return None,
    };
    Encoding::for_label(label.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(msh18: &str, body: &[u8]) -> Vec<u8> {
        let mut m =
            format!("MSH|^~\\&|RIS|H|QB|Q|20260101||ORU^R01|M1|P|2.5.1||||||{msh18}\rPID|||1||")
                .into_bytes();
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn utf8_is_read_as_such() {
        let m = msg("", "Müller".as_bytes());
        let d = decode(&m);
        assert_eq!(d.charset, "UTF-8");
        assert!(d.text.ends_with("Müller") && d.warning.is_none());
        assert!(matches!(d.text, Cow::Borrowed(_)));
    }

    #[test]
    fn eight_bit_without_msh18_is_windows_1252_with_a_warning() {
        // 0x96 is an en dash and 0x92 a right quote in Windows-1252; 0xE9 is é.
        let m = msg("", b"Caf\xe9 \x96 O\x92Brien");
        let d = decode(&m);
        assert_eq!(d.charset, "windows-1252");
        assert!(d.text.ends_with("Café – O’Brien"), "{}", d.text);
        assert!(!d.text.contains('\u{fffd}'));
        let w = d.warning.unwrap();
        assert!(w.contains("Windows-1252") && w.contains("offset"), "{w}");
        assert!(!w.contains("Caf"), "no text in the warning: {w}");
        // Undefined Windows-1252 bytes are kept as C1 controls, not replaced.
        let d = decode(b"MSH|^~\\&|A\r\x81\x8d\x8f\x90\x9d");
        assert!(
            d.text.ends_with("\u{81}\u{8d}\u{8f}\u{90}\u{9d}"),
            "{:?}",
            d.text
        );
    }

    #[test]
    fn a_declared_charset_decides_for_eight_bit_text() {
        let m = msg("8859/1", b"M\xfcller");
        let d = decode(&m);
        assert!(d.text.ends_with("Müller") && d.warning.is_none());
        let m = msg("8859/7", b"\xe1");
        let d = decode(&m);
        assert!(d.text.ends_with('α'), "{}", d.text);
        // MSH-18 says UTF-8 but the bytes are not: Windows-1252, said so.
        let m = msg("UNICODE UTF-8", b"M\xfcller");
        let d = decode(&m);
        assert!(d.text.ends_with("Müller"));
        assert!(d.warning.unwrap().contains("MSH-18 says UNICODE UTF-8"));
    }

    #[test]
    fn valid_utf8_wins_over_a_wrong_declaration() {
        let m = msg("8859/1", "–".as_bytes());
        let d = decode(&m);
        assert!(d.text.ends_with('–'));
        assert!(d.warning.unwrap().contains("declares 8859/1"));
        assert!(decode(&msg("8859/1", b"plain")).warning.is_none());
    }

    #[test]
    fn msh18_reading() {
        assert_eq!(
            msh18(&msg("8859/1~UNICODE UTF-8", b"")),
            Some("8859/1".into())
        );
        assert_eq!(msh18(&msg("", b"")), None);
        assert_eq!(msh18(b"MSH|^~\\&|A"), None);
        assert_eq!(msh18(b"nothing"), None);
    }
}
