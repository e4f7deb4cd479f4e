//! The `[qubs]` section: how to reach and authenticate against the QUBS Integrations API.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How to reach and authenticate against the QUBS Integrations API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QubsSettings {
    /// API root up to and including the version, e.g. `https://api.example/integrations/v1`.
    pub base_url: Option<String>,
    /// OAuth2 token endpoint, e.g. `https://auth.example/oauth2/token`.
    pub token_url: Option<String>,
    pub client_id: String,
    /// Client secret, inline (best set from the environment).
    #[serde(skip_serializing)]
    pub client_secret: Option<SecretString>,
    /// Alternatively a file holding the client secret (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// Domains this bridge serves; each must be in the token's domain claims.
    pub domains: Vec<String>,
    /// Page size for the pending list (QUBS accepts 1–500).
    pub page_size: u32,
    pub connect_timeout_ms: u64,
    /// Per-attempt timeout for one HTTP request, body included.
    pub request_timeout_ms: u64,
    /// Renew the token this long before it expires.
    pub token_refresh_margin_secs: u64,
    /// How long site settings (the IANA time zone) are cached.
    pub site_cache_ttl_secs: u64,
    /// `urlTtlSeconds` asked for presigned attachment URLs.
    pub attachment_url_ttl_secs: u32,
    pub retry: RetrySettings,
    /// How the token request authenticates (QUBS documents only the bearer token).
    pub auth: AuthSettings,
    /// Endpoints QUBS's documentation does not describe, used only when said to exist.
    pub endpoints: EndpointSettings,
    /// Where site time zones come from.
    pub sites: SitesSettings,
    /// Site name → IANA time zone; wins over the sites endpoint.
    #[serde(default)]
    pub site_time_zones: std::collections::BTreeMap<String, String>,
    /// The time zone of a site no other source knows: one zone, or one per domain.
    #[serde(default)]
    pub default_time_zone: Option<DefaultTimeZone>,
    /// An appointment as last seen in the pending list serves `GetOrder` while its list
    /// pass is at most this old; older, the list is read again first.
    pub pending_list_max_age_secs: u64,
}

/// The OAuth2 client-credentials token request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `client_secret_post` (id and secret in the form body) or `client_secret_basic`
    /// (HTTP Basic, RFC 6749 §2.3.1).
    pub method: ClientAuthMethod,
    /// `scope` form parameter, when the token endpoint wants one.
    #[serde(default)]
    pub scope: Option<String>,
    /// `audience` form parameter, when the token endpoint wants one.
    #[serde(default)]
    pub audience: Option<String>,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    ClientSecretPost,
    ClientSecretBasic,
}

/// Assumed QUBS endpoints that may be switched on.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSettings {
    /// `GET {domain}/reporting/appointments/{id}` exists. Off by default: QUBS documents
    /// only the pending list, and every flow works from it.
    pub appointment: bool,
}

/// The assumed sites endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SitesSettings {
    /// Ask `GET {domain}/sites/{siteName}` for time zones; when it is missing the bridge
    /// falls back to configuration with one warning.
    pub endpoint: bool,
}

/// `qubs.default_time_zone`: one zone for every domain, or a table domain → zone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DefaultTimeZone {
    All(String),
    PerDomain(std::collections::BTreeMap<String, String>),
}

impl DefaultTimeZone {
    /// The zone for `domain`, if one is set.
    pub fn for_domain(&self, domain: &str) -> Option<&str> {
        match self {
            DefaultTimeZone::All(zone) => Some(zone.trim()),
            DefaultTimeZone::PerDomain(zones) => zones.get(domain).map(|z| z.trim()),
        }
    }
}

/// Back-off policy for transient QUBS failures (429, 502/503/504, connect errors, timeouts).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Upper bound on the total time spent on one call, retries included.
    pub max_elapsed_ms: u64,
    /// Upper bound on attempts for one call (first attempt included).
    pub max_attempts: u32,
}

impl Default for QubsSettings {
    fn default() -> Self {
        QubsSettings {
            base_url: None,
            token_url: None,
            client_id: "qubs-bridge".into(),
            client_secret: None,
            client_secret_file: None,
            domains: vec!["acme".into()],
            page_size: 100,
            connect_timeout_ms: 5000,
            request_timeout_ms: 30_000,
            token_refresh_margin_secs: 120,
            site_cache_ttl_secs: 3600,
            attachment_url_ttl_secs: 900,
            retry: RetrySettings::default(),
            auth: AuthSettings::default(),
            endpoints: EndpointSettings::default(),
            sites: SitesSettings::default(),
            site_time_zones: Default::default(),
            default_time_zone: None,
            pending_list_max_age_secs: 120,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            method: ClientAuthMethod::ClientSecretPost,
            scope: None,
            audience: None,
        }
    }
}

impl Default for SitesSettings {
    fn default() -> Self {
        SitesSettings { endpoint: true }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial_backoff_ms: 200,
            max_backoff_ms: 20_000,
            max_elapsed_ms: 120_000,
            max_attempts: 8,
        }
    }
}

impl QubsSettings {
    /// The client secret, read from `client_secret_file` when that is the configured source.
    pub fn client_secret(&self) -> Result<SecretString, crate::config::ConfigError> {
        if let Some(s) = &self.client_secret {
            return Ok(s.clone());
        }
        let path = self
            .client_secret_file
            .as_ref()
            .ok_or_else(|| crate::config::invalid("qubs.client_secret", "missing"))?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::config::invalid(
                "qubs.client_secret_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let secret = text.trim_end_matches(['\r', '\n']).to_string();
        if secret.is_empty() {
            return Err(crate::config::invalid(
                "qubs.client_secret_file",
                format!("{} is empty", path.display()),
            ));
        }
        Ok(SecretString::from(secret))
    }

    /// The validated API root, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.base_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
    }

    /// The validated token endpoint.
    pub fn token_url(&self) -> &str {
        self.token_url.as_deref().unwrap_or_default()
    }

    /// The configured time zone of a site (`qubs.site_time_zones`), by exact name.
    pub fn configured_site_time_zone(&self, site_name: &str) -> Option<&str> {
        self.site_time_zones.get(site_name).map(|z| z.trim())
    }

    /// `qubs.default_time_zone` for `domain`, if any.
    pub fn default_time_zone(&self, domain: &str) -> Option<&str> {
        self.default_time_zone.as_ref()?.for_domain(domain)
    }

    pub fn pending_list_max_age(&self) -> Duration {
        Duration::from_secs(self.pending_list_max_age_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
