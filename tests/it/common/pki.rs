//! A test certificate authority and the certificates it signs, written to a temporary
//! directory, for TLS and mutual-TLS tests.

use std::path::PathBuf;

use qubs_bridge::config::TlsSettings;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "qubs-bridge test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        }
    }

    /// A certificate signed by the CA, for `cn` and the DNS/IP `names`: (cert PEM, key PEM).
    pub fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// As [`Pki::issue`], written to `<name>.pem` and `<name>.key`; returns their paths.
    pub fn issue_files(&self, name: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(cn, names);
        (
            self.write(&format!("{name}.pem"), &cert),
            self.write(&format!("{name}.key"), &key),
        )
    }

    pub fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA certificate as a file.
    pub fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca_pem())
    }

    /// Server settings for localhost/127.0.0.1; `mutual` also requires client certificates.
    pub fn server_tls(&self, mutual: bool) -> TlsSettings {
        let (cert_file, key_file) =
            self.issue_files("server", "qubs-bridge", &["localhost", "127.0.0.1"]);
        TlsSettings {
            cert_file,
            key_file,
            client_ca_file: mutual.then(|| self.ca_file()),
        }
    }
}
