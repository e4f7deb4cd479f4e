//! Who is calling: bearer tokens (stored as SHA-256 hashes in the configuration) or client
//! certificates (by Common Name, under mutual TLS), each allowed a list of QUBS domains.
//!
//! Tokens are long random strings, so one SHA-256 is enough to keep them out of the
//! configuration; a leaked config file does not leak a usable token.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::config::GrpcSettings;

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    /// The configured name, for logs and metrics.
    pub name: String,
    domains: HashSet<String>,
}

impl Caller {
    /// The domains the caller may use, sorted.
    pub fn domains(&self) -> Vec<String> {
        let mut d: Vec<String> = self.domains.iter().cloned().collect();
        d.sort();
        d
    }

    /// PERMISSION_DENIED unless the caller may use `domain`.
    pub fn authorize(&self, domain: &str) -> Result<(), Status> {
        if domain.is_empty() {
            return Err(Status::invalid_argument("domain is required"));
        }
        if self.domains.contains(domain) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "caller `{}` may not use domain `{domain}`",
                self.name
            )))
        }
    }
}

/// Looks callers up by token hash or certificate CN.
#[derive(Clone, Default)]
pub struct Authenticator {
    by_token: Arc<HashMap<String, Arc<Caller>>>,
    by_cn: Arc<HashMap<String, Arc<Caller>>>,
}

impl Authenticator {
    pub fn new(settings: &GrpcSettings) -> Authenticator {
        let mut by_token = HashMap::new();
        let mut by_cn = HashMap::new();
        for c in &settings.clients {
            let caller = Arc::new(Caller {
                name: c.name.clone(),
                domains: c.domains.iter().cloned().collect(),
            });
            if let Some(h) = &c.token_sha256 {
                by_token.insert(h.to_ascii_lowercase(), caller.clone());
            }
            if let Some(cn) = &c.certificate_cn {
                by_cn.insert(cn.clone(), caller);
            }
        }
        Authenticator {
            by_token: Arc::new(by_token),
            by_cn: Arc::new(by_cn),
        }
    }

    /// The caller behind a request, or UNAUTHENTICATED with what was wrong.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Arc<Caller>, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Status::unauthenticated("authorization metadata must be `Bearer <token>`")
                })?;
            return self
                .by_token
                .get(&hash_token(token))
                .cloned()
                .ok_or_else(|| Status::unauthenticated("unknown bearer token"));
        }
        if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
        {
            let cn = crate::tls::certificate_common_name(leaf.as_ref()).ok_or_else(|| {
                Status::unauthenticated("the client certificate has no Common Name")
            })?;
            return self.by_cn.get(&cn).cloned().ok_or_else(|| {
                Status::unauthenticated(format!(
                    "no caller is configured for certificate CN `{cn}`"
                ))
            });
        }
        Err(Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` metadata or a client certificate",
        ))
    }
}

/// A tonic interceptor: authenticates every call and attaches the [`Caller`].
pub fn interceptor(
    auth: Authenticator,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        request
            .extensions_mut()
            .insert(super::Arrived(std::time::Instant::now()));
        let caller = auth.authenticate(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The authenticated caller of a request (set by [`interceptor`]).
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, Status> {
    request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

/// SHA-256 of a token, lower-case hex: what `grpc.clients[].token_sha256` holds.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random bearer token (256 bits, URL-safe base64).
pub fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GrpcClient;

    fn settings() -> GrpcSettings {
        GrpcSettings {
            clients: vec![GrpcClient {
                name: "engine".into(),
                token_sha256: Some(hash_token("t0k3n")),
                certificate_cn: None,
                domains: vec!["acme".into()],
            }],
            tls: None,
            max_message_bytes: 1 << 20,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            fetch_concurrency: 4,
        }
    }

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_are_checked_by_hash_and_domains_by_caller() {
        let auth = Authenticator::new(&settings());
        let caller = auth.authenticate(&request(Some("Bearer t0k3n"))).unwrap();
        assert_eq!(caller.name, "engine");
        assert!(caller.authorize("acme").is_ok());
        assert_eq!(
            caller.authorize("globex").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        for bad in [Some("Bearer nope"), Some("Basic abc"), None] {
            assert_eq!(
                auth.authenticate(&request(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }

    #[test]
    fn new_tokens_are_long_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.len() >= 43);
        assert_eq!(hash_token(&a).len(), 64);
    }
}
