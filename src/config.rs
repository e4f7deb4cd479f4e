//! Service configuration: built-in defaults, then an optional file (TOML), then environment
//! overrides (`QUBS_BRIDGE__QUBS__BASE_URL` sets `qubs.base_url`), read with the `config` crate.
//!
//! Everything is validated before the service starts: a bad value stops start-up with one
//! message that names the key and the reason. Secrets (the QUBS client secret) are held in
//! [`secrecy::SecretString`], so they are redacted in `Debug` output and never logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use crate::grpc::settings::{GrpcClient, GrpcSettings};
pub use crate::live_mappings::{BrokenAtStart, MappingsSettings};
pub use crate::qubs::settings::{
    AuthSettings, ClientAuthMethod, DefaultTimeZone, EndpointSettings, QubsSettings, RetrySettings,
    SitesSettings,
};
pub use crate::results::settings::{AckMode, AttachmentHandling, ResultsSettings};
pub use crate::service::ServerSettings;
pub use crate::telemetry::{LogFormat, TelemetrySettings};
pub use crate::tls::TlsSettings;

/// The defaults every deployment starts from, as TOML: each component's own defaults
/// (its settings' `Default`), the first layer under the file and the environment. Tables
/// such as `mappings.values` merge key by key with the layers above.
pub fn defaults_toml() -> String {
    toml::to_string(&Settings::default()).expect("the default settings serialize")
}

/// The longest retry horizon allowed: under QUBS's 24-hour idempotency-key retention.
pub const MAX_RETRY_HORIZON_SECS: u64 = 23 * 3600;

/// Prefix of environment overrides: `QUBS_BRIDGE__SECTION__KEY`.
pub const ENV_PREFIX: &str = "QUBS_BRIDGE";

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// A TOML syntax error as line, column and message. Not `Display`: that quotes the line
/// around the error, and when the line is `client_secret = "...` that is the secret.
fn toml_syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return message.to_string();
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    format!("line {line}, column {column}: {message}")
}

/// A serde message without the value it quotes: `invalid type: string "…", expected u32`
/// becomes `invalid type: string, expected u32`. The value may be a secret set under the
/// wrong key (`qubs = "<secret>"`).
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = ["invalid type: ", "invalid value: "]
        .iter()
        .filter_map(|m| rest.find(m).map(|i| i + m.len()))
        .min()
    {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // The kind of value (`string`, `integer`, `a map`...), then the quoted value.
        let quote = rest
            .find(['"', '`', '\''])
            .filter(|&q| q > 0 && rest[..q].ends_with(' ') && !rest[..q].contains(','));
        let Some(q) = quote else { continue };
        out.push_str(rest[..q].trim_end());
        let close = rest.as_bytes()[q];
        let mut escaped = false;
        let mut end = rest.len();
        for (i, b) in rest.bytes().enumerate().skip(q + 1) {
            match b {
                b'\\' if close == b'"' && !escaped => escaped = true,
                b if b == close && !escaped => {
                    end = i + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The whole service configuration: one section per component, each owning its settings
/// and their defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub qubs: QubsSettings,
    pub server: ServerSettings,
    pub grpc: GrpcSettings,
    pub mappings: MappingsSettings,
    /// Where the outbox and the feed keep their state: SQLite, or PostgreSQL for replicas.
    pub store: crate::store::StoreSettings,
    pub results: ResultsSettings,
    /// The MLLP listener for ORU^R01 results.
    pub mllp: crate::mllp::MllpServerSettings,
    /// The HL7 order feed (off unless enabled).
    pub feed: crate::feed::FeedSettings,
    /// The web console on the admin listener (nobody can sign in until users are listed).
    #[serde(default)]
    pub console: crate::console::ConsoleSettings,
    pub telemetry: TelemetrySettings,
}

impl Settings {
    /// Defaults, then `file` (if any), then `QUBS_BRIDGE__*` environment variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (used by tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let settings = Self::load_unchecked(file, env)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The layered settings before [`Settings::validate`]; demo mode fills in the embedded
    /// simulator's address and credentials here before validating.
    pub fn load_unchecked(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};
        let defaults = defaults_toml();
        let mut builder = Config::builder().add_source(File::from_str(&defaults, FileFormat::Toml));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            // Parse first with `toml` so syntax errors carry line and column.
            if let Err(e) = toml::from_str::<toml::Table>(&text) {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    reason: toml_syntax_error(&text, &e),
                });
            }
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("qubs.domains")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError::Load(without_values(&e.to_string())))?;
        let settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError::Load(without_values(&e.to_string())))?;
        Ok(settings)
    }

    /// Semantic checks the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let q = &self.qubs;
        check_http_url("qubs.base_url", q.base_url.as_deref())?;
        check_http_url("qubs.token_url", q.token_url.as_deref())?;
        if q.client_id.trim().is_empty() {
            return Err(invalid("qubs.client_id", "must not be empty"));
        }
        match (&q.client_secret, &q.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "qubs.client_secret",
                    "set either qubs.client_secret or qubs.client_secret_file, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "qubs.client_secret",
                    "missing: set QUBS_BRIDGE__QUBS__CLIENT_SECRET or qubs.client_secret_file",
                ));
            }
            (Some(s), None) if s.expose_secret().is_empty() => {
                return Err(invalid("qubs.client_secret", "must not be empty"));
            }
            _ => {}
        }
        if q.domains.is_empty() {
            return Err(invalid("qubs.domains", "list at least one QUBS domain"));
        }
        for d in &q.domains {
            if d.is_empty()
                || !d
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    "qubs.domains",
                    format!("`{d}` is not a domain name (letters, digits, '-' and '_' only)"),
                ));
            }
        }
        if !(1..=500).contains(&q.page_size) {
            return Err(invalid(
                "qubs.page_size",
                format!("must be between 1 and 500 (got {})", q.page_size),
            ));
        }
        positive("qubs.connect_timeout_ms", q.connect_timeout_ms)?;
        positive("qubs.request_timeout_ms", q.request_timeout_ms)?;
        positive("qubs.site_cache_ttl_secs", q.site_cache_ttl_secs)?;
        if !(1..=86_400).contains(&q.attachment_url_ttl_secs) {
            return Err(invalid(
                "qubs.attachment_url_ttl_secs",
                format!(
                    "must be between 1 and 86400 (got {})",
                    q.attachment_url_ttl_secs
                ),
            ));
        }
        let r = &q.retry;
        positive("qubs.retry.initial_backoff_ms", r.initial_backoff_ms)?;
        if r.max_backoff_ms < r.initial_backoff_ms {
            return Err(invalid(
                "qubs.retry.max_backoff_ms",
                format!(
                    "must be at least qubs.retry.initial_backoff_ms ({})",
                    r.initial_backoff_ms
                ),
            ));
        }
        if r.max_attempts == 0 {
            return Err(invalid(
                "qubs.retry.max_attempts",
                "must be at least 1 (1 = no retries)",
            ));
        }
        self.validate_qubs_assumptions()?;
        for (key, addr) in [
            ("server.admin_listen", &self.server.admin_listen),
            ("server.grpc_listen", &self.server.grpc_listen),
        ] {
            addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    key,
                    format!("`{addr}` is not a socket address like 127.0.0.1:8080"),
                )
            })?;
        }
        positive(
            "server.qubs_probe_interval_secs",
            self.server.qubs_probe_interval_secs,
        )?;
        self.validate_grpc()?;
        self.validate_results()?;
        self.feed
            .validate(&self.qubs.domains)
            .map_err(|e| invalid(&format!("feed.{}", e.key), e.reason))?;
        self.mllp
            .validate()
            .map_err(|e| invalid(&format!("mllp.{}", e.key), e.reason))?;
        if let Some(d) = &self.mllp.domain
            && !self.qubs.domains.contains(d)
        {
            return Err(invalid(
                "mllp.domain",
                format!("`{d}` is not one of qubs.domains"),
            ));
        }
        if self.mllp.enabled && self.mllp.domain.is_none() && self.qubs.domains.len() > 1 {
            return Err(invalid(
                "mllp.domain",
                "the bridge serves several domains: say which one MLLP results belong to",
            ));
        }
        self.console
            .validate(&self.qubs.domains)
            .map_err(|(key, reason)| invalid(&key, reason))?;
        tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_filter)
            .map_err(|e| invalid("telemetry.log_filter", e.to_string()))?;
        Ok(())
    }

    /// The settings for what QUBS does not document: token request, time zones.
    fn validate_qubs_assumptions(&self) -> Result<(), ConfigError> {
        let q = &self.qubs;
        for (key, value) in [
            ("qubs.auth.scope", &q.auth.scope),
            ("qubs.auth.audience", &q.auth.audience),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(key, "must not be empty when set (leave it out)"));
            }
        }
        positive(
            "qubs.pending_list_max_age_secs",
            q.pending_list_max_age_secs,
        )?;
        for (site, zone) in &q.site_time_zones {
            check_time_zone(&format!("qubs.site_time_zones.\"{site}\""), zone)?;
        }
        match &q.default_time_zone {
            None => {}
            Some(DefaultTimeZone::All(zone)) => check_time_zone("qubs.default_time_zone", zone)?,
            Some(DefaultTimeZone::PerDomain(zones)) => {
                for (domain, zone) in zones {
                    let key = format!("qubs.default_time_zone.{domain}");
                    if !q.domains.contains(domain) {
                        return Err(invalid(
                            &key,
                            format!("`{domain}` is not one of qubs.domains"),
                        ));
                    }
                    check_time_zone(&key, zone)?;
                }
            }
        }
        Ok(())
    }

    fn validate_results(&self) -> Result<(), ConfigError> {
        self.store
            .validate()
            .map_err(|e| invalid(&format!("store.{}", e.key), e.reason))?;
        self.store
            .password()
            .map_err(|e| invalid(&format!("store.{}", e.key), e.reason))?;
        let r = &self.results;
        positive("results.ack_wait_secs", r.ack_wait_secs)?;
        positive("results.workers", r.workers as u64)?;
        positive("results.retry_initial_ms", r.retry_initial_ms)?;
        if r.retry_max_ms < r.retry_initial_ms {
            return Err(invalid(
                "results.retry_max_ms",
                "must not be less than results.retry_initial_ms",
            ));
        }
        if !(1..=MAX_RETRY_HORIZON_SECS).contains(&r.retry_horizon_secs) {
            return Err(invalid(
                "results.retry_horizon_secs",
                format!(
                    "must be between 1 and {MAX_RETRY_HORIZON_SECS} (QUBS keeps idempotency keys 24 h; a later retry could store a second report), got {}",
                    r.retry_horizon_secs
                ),
            ));
        }
        if !(1..=crate::qubs::MAX_UPLOAD_BYTES).contains(&r.max_attachment_bytes) {
            return Err(invalid(
                "results.max_attachment_bytes",
                format!(
                    "must be between 1 and {} (QUBS's limit for one upload)",
                    crate::qubs::MAX_UPLOAD_BYTES
                ),
            ));
        }
        Ok(())
    }

    fn validate_grpc(&self) -> Result<(), ConfigError> {
        let g = &self.grpc;
        if g.max_message_bytes < 1024 {
            return Err(invalid("grpc.max_message_bytes", "must be at least 1024"));
        }
        positive("grpc.keepalive_interval_secs", g.keepalive_interval_secs)?;
        positive("grpc.keepalive_timeout_secs", g.keepalive_timeout_secs)?;
        if g.fetch_concurrency == 0 {
            return Err(invalid("grpc.fetch_concurrency", "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in g.clients.iter().enumerate() {
            let key = |field: &str| format!("grpc.clients[{i}].{field}");
            if c.name.trim().is_empty() {
                return Err(invalid(&key("name"), "must not be empty"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(invalid(&key("name"), format!("`{}` is used twice", c.name)));
            }
            match (&c.token_sha256, &c.certificate_cn) {
                (None, None) => {
                    return Err(invalid(
                        &key("token_sha256"),
                        "set token_sha256 or certificate_cn so the caller can be identified",
                    ));
                }
                (Some(h), _) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    return Err(invalid(
                        &key("token_sha256"),
                        "must be 64 hex digits (qubs-bridge grpc new-token prints one)",
                    ));
                }
                (_, Some(_)) if g.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) => {
                    return Err(invalid(
                        &key("certificate_cn"),
                        "client certificates need grpc.tls.client_ca_file",
                    ));
                }
                _ => {}
            }
            if c.domains.is_empty() {
                return Err(invalid(
                    &key("domains"),
                    "list the QUBS domains this caller may use",
                ));
            }
            for d in &c.domains {
                if !self.qubs.domains.contains(d) {
                    return Err(invalid(
                        &key("domains"),
                        format!("`{d}` is not one of qubs.domains"),
                    ));
                }
            }
        }
        if let Some(tls) = &g.tls {
            for (field, path) in [
                ("cert_file", Some(&tls.cert_file)),
                ("key_file", Some(&tls.key_file)),
                ("client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path
                    && !path.is_file()
                {
                    return Err(invalid(
                        &format!("grpc.tls.{field}"),
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The client secret, read from the file when one is configured.
    pub fn client_secret(&self) -> Result<SecretString, ConfigError> {
        self.qubs.client_secret()
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

fn check_time_zone(key: &str, zone: &str) -> Result<(), ConfigError> {
    jiff::tz::TimeZone::get(zone.trim())
        .map(|_| ())
        .map_err(|_| {
            invalid(
                key,
                format!("`{zone}` is not an IANA time zone (e.g. Australia/Sydney)"),
            )
        })
}

fn check_http_url(key: &str, value: Option<&str>) -> Result<(), ConfigError> {
    let env_name = format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase());
    let value = value.ok_or_else(|| {
        invalid(
            key,
            format!("missing: set it in the config file or with {env_name}"),
        )
    })?;
    let url = reqwest::Url::parse(value)
        .map_err(|e| invalid(key, format!("`{value}` is not a URL: {e}")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(invalid(key, format!("`{value}` must be an http(s) URL")));
    }
    if url.host_str().is_none() {
        return Err(invalid(key, format!("`{value}` has no host")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_do_not_quote_values() {
        assert_eq!(
            without_values(
                "invalid type: string \"pw \\\"x\\\" y\", expected struct QubsSettings for key `qubs`"
            ),
            "invalid type: string, expected struct QubsSettings for key `qubs`"
        );
        assert_eq!(
            without_values("invalid value: integer `70000`, expected u16 for key `a`"),
            "invalid value: integer, expected u16 for key `a`"
        );
        assert_eq!(
            without_values("invalid type: map, expected a string"),
            "invalid type: map, expected a string"
        );
        assert_eq!(without_values("missing field `x`"), "missing field `x`");
    }

    /// The given variables plus the two required URLs (unless given).
    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in [
            (
                "QUBS_BRIDGE__QUBS__BASE_URL",
                "https://qubs.test/integrations/v1",
            ),
            (
                "QUBS_BRIDGE__QUBS__TOKEN_URL",
                "https://auth.test/oauth2/token",
            ),
        ] {
            if !all.iter().any(|(key, _)| key == k) {
                all.push((k.to_string(), v.to_string()));
            }
        }
        all
    }

    #[test]
    fn env_overrides_nested_keys_and_lists() {
        let vars = [
            (
                "QUBS_BRIDGE__QUBS__BASE_URL",
                "https://qubs.test/integrations/v1/",
            ),
            ("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "s3cret"),
            ("QUBS_BRIDGE__QUBS__DOMAINS", "acme,globex"),
            ("QUBS_BRIDGE__QUBS__PAGE_SIZE", "250"),
        ];
        // Several domains: MLLP results must say which one they belong to.
        let e = Settings::load_with_env(None, env(&vars)).unwrap_err();
        assert!(e.to_string().contains("`mllp.domain`"), "{e}");
        let with_domain = [vars.as_slice(), &[("QUBS_BRIDGE__MLLP__DOMAIN", "globex")]].concat();
        let s = Settings::load_with_env(None, env(&with_domain)).unwrap();
        assert_eq!(s.mllp.domain.as_deref(), Some("globex"));
        assert_eq!(s.qubs.base_url(), "https://qubs.test/integrations/v1");
        assert_eq!(s.qubs.domains, vec!["acme", "globex"]);
        assert_eq!(s.qubs.page_size, 250);
        assert_eq!(s.client_secret().unwrap().expose_secret(), "s3cret");
    }

    #[test]
    fn secret_is_redacted_in_debug() {
        let s = Settings::load_with_env(
            None,
            env(&[("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "very-secret-value")]),
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("client_id"));
    }

    #[test]
    fn page_size_out_of_range_names_the_key() {
        let e = Settings::load_with_env(
            None,
            env(&[
                ("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x"),
                ("QUBS_BRIDGE__QUBS__PAGE_SIZE", "0"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "configuration key `qubs.page_size`: must be between 1 and 500 (got 0)"
        );
    }

    #[test]
    fn missing_secret_says_how_to_set_it() {
        let e = Settings::load_with_env(None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("qubs.client_secret"), "{e}");
        assert!(e.contains("QUBS_BRIDGE__QUBS__CLIENT_SECRET"), "{e}");
    }

    #[test]
    fn missing_base_url_names_its_env_variable() {
        let e = Settings::load_with_env(
            None,
            vec![("QUBS_BRIDGE__QUBS__CLIENT_SECRET".into(), "x".into())],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "configuration key `qubs.base_url`: missing: set it in the config file or with QUBS_BRIDGE__QUBS__BASE_URL"
        );
    }

    #[test]
    fn non_numeric_value_names_the_key() {
        let e = Settings::load_with_env(
            None,
            env(&[
                ("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x"),
                ("QUBS_BRIDGE__QUBS__PAGE_SIZE", "many"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("page_size"), "{e}");
    }

    #[test]
    fn mapping_values_keep_their_case() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "[mappings.values]\nreceivingFacility = \"RAD\"\n").unwrap();
        let s = Settings::load_with_env(
            Some(&path),
            env(&[("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x")]),
        )
        .unwrap();
        assert_eq!(s.mappings.values["receivingFacility"], "RAD");
        assert_eq!(
            s.mappings.values["placerIdentifierSystem"],
            "urn:qubs:appointment"
        );
    }

    #[test]
    fn the_output_check_is_basic_unless_full_is_asked_for() {
        use crate::mapping::OutputCheck;
        assert_eq!(
            from_file("").unwrap().mappings.output_check,
            OutputCheck::Basic
        );
        let s = from_file("[mappings]\noutput_check = \"full\"\n").unwrap();
        assert_eq!(s.mappings.output_check, OutputCheck::Full);
        let e = from_file("[mappings]\noutput_check = \"thorough\"\n").unwrap_err();
        assert!(e.to_string().contains("output_check"), "{e}");
    }

    /// Settings from a config file with `text`, the secret from the environment.
    fn from_file(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load_with_env(
            Some(&path),
            env(&[("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x")]),
        )
    }

    #[test]
    fn what_qubs_does_not_document_has_safe_defaults() {
        let s = from_file("").unwrap();
        let q = &s.qubs;
        assert!(!q.endpoints.appointment, "the undocumented GET is off");
        assert!(q.sites.endpoint);
        assert_eq!(q.auth.method, ClientAuthMethod::ClientSecretPost);
        assert_eq!(
            (q.auth.scope.as_deref(), q.auth.audience.as_deref()),
            (None, None)
        );
        assert!(q.site_time_zones.is_empty());
        assert_eq!(q.default_time_zone("acme"), None);
        assert_eq!(s.results.attachments, AttachmentHandling::Upload);
    }

    #[test]
    fn site_time_zones_keep_their_names_and_default_zones_go_per_domain() {
        let s = from_file(
            r#"
[qubs]
domains = ["acme", "globex"]
default_time_zone = "Australia/Sydney"
[qubs.site_time_zones]
"Harbour Imaging" = "Australia/Sydney"
"KOWHAI Medical" = "Pacific/Auckland"
[qubs.auth]
method = "client_secret_basic"
scope = "integrations"
[mllp]
domain = "acme"
[results]
attachments = "inline_note"
"#,
        )
        .unwrap();
        let q = &s.qubs;
        assert_eq!(
            q.configured_site_time_zone("Harbour Imaging"),
            Some("Australia/Sydney")
        );
        assert_eq!(
            q.configured_site_time_zone("KOWHAI Medical"),
            Some("Pacific/Auckland")
        );
        assert_eq!(q.configured_site_time_zone("kowhai medical"), None);
        assert_eq!(q.default_time_zone("globex"), Some("Australia/Sydney"));
        assert_eq!(q.auth.method, ClientAuthMethod::ClientSecretBasic);
        assert_eq!(s.results.attachments, AttachmentHandling::InlineNote);

        let s = from_file(
            "[qubs]\ndomains = [\"acme\", \"globex\"]\n[qubs.default_time_zone]\nacme = \"Europe/London\"\n[mllp]\ndomain = \"acme\"\n",
        )
        .unwrap();
        assert_eq!(s.qubs.default_time_zone("acme"), Some("Europe/London"));
        assert_eq!(s.qubs.default_time_zone("globex"), None);
    }

    #[test]
    fn a_zone_that_is_not_iana_or_a_foreign_domain_names_its_key() {
        let e = from_file("[qubs.site_time_zones]\n\"Harbour Imaging\" = \"Sydney\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "configuration key `qubs.site_time_zones.\"Harbour Imaging\"`: `Sydney` is not an IANA time zone (e.g. Australia/Sydney)"
        );
        let e = from_file("[qubs]\ndefault_time_zone = \"Mars/Olympus_Mons\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`qubs.default_time_zone`"), "{e}");
        let e = from_file("[qubs.default_time_zone]\nglobex = \"UTC\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "configuration key `qubs.default_time_zone.globex`: `globex` is not one of qubs.domains"
        );
        let e = from_file("[qubs.auth]\nscope = \" \"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`qubs.auth.scope`"), "{e}");
        let e = from_file("[qubs.auth]\nmethod = \"private_key_jwt\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("method"), "{e}");
        let e = from_file("[results]\nattachments = \"email\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("attachments"), "{e}");
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let s = Settings::load_with_env(
            None,
            env(&[(
                "QUBS_BRIDGE__QUBS__CLIENT_SECRET_FILE",
                path.to_str().unwrap(),
            )]),
        )
        .unwrap();
        assert_eq!(s.client_secret().unwrap().expose_secret(), "from-file");
    }

    /// The backticked words of a README table cell.
    fn backticked(cell: &str) -> Vec<&str> {
        cell.split('`').skip(1).step_by(2).collect()
    }

    /// Every value under `key` (dotted) in the settings as JSON.
    fn at<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
        key.split('.').try_fold(value, |v, k| v.get(k))
    }

    fn leaves(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value.as_object() {
            // Tables of names (mappings.values, qubs.site_time_zones) are one setting each.
            Some(map) if !map.is_empty() && prefix != "mappings.values" => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &key, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn the_documented_defaults_are_the_ones_loaded() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("## Configuration reference")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a configuration reference");
        // What the layers give with nothing but the two required URLs and a secret.
        let loaded =
            Settings::load_with_env(None, env(&[("QUBS_BRIDGE__QUBS__CLIENT_SECRET", "x")]))
                .unwrap();
        let mut loaded = serde_json::to_value(&loaded).unwrap();
        for key in ["base_url", "token_url"] {
            loaded["qubs"][key] = serde_json::Value::Null;
        }
        assert_eq!(loaded, serde_json::to_value(Settings::default()).unwrap());
        let mut documented = Vec::new();
        let mut checked = 0;
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
            let keys: Vec<&str> = backticked(cells[0])
                .into_iter()
                .filter(|k| k.contains('.') && !k.starts_with('.'))
                .map(|k| k.trim_end_matches(".*").trim_end_matches("[]"))
                .collect();
            documented.extend(keys.iter().map(|k| k.to_string()));
            let default = cells[1].trim();
            let values = backticked(default);
            let only_values = default.replace(['`', '/', ' '], "").len()
                == values.iter().map(|v| v.len()).sum::<usize>();
            for (i, key) in keys.iter().enumerate() {
                let value = at(&loaded, key);
                match default {
                    "—" | "(required)" => assert!(
                        value.is_none_or(|v| v.is_null()),
                        "README: `{key}` has no default, but {value:?} is loaded"
                    ),
                    "none" => assert!(
                        value.is_some_and(|v| v.as_array().is_some_and(|a| a.is_empty())
                            || v.as_object().is_some_and(|o| o.is_empty())),
                        "README: `{key}` defaults to none, but {value:?} is loaded"
                    ),
                    _ if only_values && values.len() == keys.len() => {
                        let value = value.unwrap_or_else(|| {
                            panic!("README documents `{key}`, which does not exist")
                        });
                        let shown = match value {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        assert_eq!(
                            shown, values[i],
                            "README: the default of `{key}` is `{}`, but `{shown}` is loaded",
                            values[i]
                        );
                        checked += 1;
                    }
                    _ => assert!(
                        value.is_some()
                            || key.ends_with("tls.cert_file")
                            || key.ends_with("tls.key_file")
                            || key.ends_with("tls.client_ca_file")
                            || key.ends_with("mllp.domain")
                            || key.starts_with("feed.domains"),
                        "README documents `{key}`, which does not exist"
                    ),
                }
            }
        }
        assert!(checked >= 50, "only {checked} defaults checked");
        // And every setting there is, is documented.
        let mut all = Vec::new();
        leaves(&loaded, "", &mut all);
        let missing: Vec<&String> = all
            .iter()
            .filter(|k| {
                !documented.iter().any(|d| {
                    k == &d || k.starts_with(&format!("{d}.")) || d.starts_with(&format!("{k}."))
                })
            })
            .collect();
        assert!(
            missing.is_empty(),
            "not in README's configuration reference: {missing:?}"
        );
    }
}
