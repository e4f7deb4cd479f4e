//! What the gRPC and MLLP listeners share about TLS peers.

/// The Common Name of a DER certificate's subject: the identity of a mutual-TLS client.
pub fn certificate_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}
