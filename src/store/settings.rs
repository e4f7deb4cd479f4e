//! The `[store]` section: which backend, where, and how replicas share it.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Where the outbox and the feed keep their state. Every field has a default: the
/// embedded SQLite file at `data/bridge.db`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The embedded store (SQLite), used while `url` is unset; created with its directory.
    pub path: PathBuf,
    /// `postgres://user@host:5432/db?sslmode=verify-full`: PostgreSQL, shared by every
    /// replica. Unset: the embedded store at `path`.
    pub url: Option<String>,
    /// The database password (best set from `QUBS_BRIDGE__STORE__PASSWORD`).
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// Or: a file holding it (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates that signed the server's certificate (`sslmode=verify-ca` or
    /// `verify-full`); the URL's `sslrootcert` names one too.
    pub ca_file: Option<PathBuf>,
    /// How long a claim on a result, or the leadership of a domain's poll or a
    /// destination's queue, lasts without being renewed: how soon another replica takes
    /// over the work of one that died.
    pub lease_secs: u64,
    /// Connections each replica keeps to PostgreSQL at most (one more listens for
    /// notifications).
    pub pool_size: usize,
    /// Time allowed for connecting (and for waiting for a free pooled connection).
    pub connect_timeout_secs: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            path: PathBuf::from("data/bridge.db"),
            url: None,
            password: None,
            password_file: None,
            ca_file: None,
            lease_secs: 30,
            pool_size: 16,
            connect_timeout_secs: 5,
        }
    }
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("lease_secs", &self.lease_secs)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .finish()
    }
}

/// A setting that is out of range; `key` is the field name within the store section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct SettingsError {
    pub key: &'static str,
    pub reason: String,
}

impl StoreSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Checks ranges and combinations (not whether the database answers).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |key, reason: String| Err(SettingsError { key, reason });
        if self.path.as_os_str().is_empty() {
            return err("path", "must not be empty".into());
        }
        if let Some(url) = &self.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return err(
                    "url",
                    format!(
                        "`{}` is not a postgres:// URL (leave it unset for the embedded store at store.path)",
                        redact_url(url)
                    ),
                );
            }
            if let Err(e) = super::postgres::parse_url(url) {
                return err("url", e);
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return err(
                "password",
                "set either store.password or store.password_file, not both".into(),
            );
        }
        if !(2..=3600).contains(&self.lease_secs) {
            return err(
                "lease_secs",
                format!("must be between 2 and 3600 (got {})", self.lease_secs),
            );
        }
        if !(2..=1000).contains(&self.pool_size) {
            return err(
                "pool_size",
                format!("must be between 2 and 1000 (got {})", self.pool_size),
            );
        }
        if self.connect_timeout_secs == 0 {
            return err("connect_timeout_secs", "must be at least 1".into());
        }
        Ok(())
    }

    /// The password: `password`, else the file's content, else none (the URL's, or none).
    pub fn password(&self) -> Result<Option<SecretString>, SettingsError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError {
            key: "password_file",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(SettingsError {
                key: "password_file",
                reason: format!("{} is empty", path.display()),
            });
        }
        Ok(Some(SecretString::from(password.to_string())))
    }
}

/// A database URL fit for logs and operators: any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    // A password may also come as a query parameter.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Exposes a secret for the one place that must hand it to the driver.
pub(crate) fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://bridge:s3cret@db.example:5432/qubs?sslmode=require"),
            "postgres://bridge:***@db.example:5432/qubs?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://db/qubs?user=b&password=s3cret"),
            "postgresql://db/qubs?user=b&password=***"
        );
        assert_eq!(
            redact_url("postgres://bridge@db/qubs"),
            "postgres://bridge@db/qubs"
        );
        let settings = StoreSettings {
            url: Some("postgres://bridge:s3cret@db/qubs".into()),
            password: Some(SecretString::from("other-secret".to_string())),
            ..Default::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("other-secret"), "{shown}");
    }

    #[test]
    fn ranges_and_urls_are_checked() {
        let bad = StoreSettings {
            url: Some("mysql://db/x".into()),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "url");
        let bad = StoreSettings {
            url: Some("postgres://db/x?sslmode=sometimes".into()),
            ..Default::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(e.reason.contains("sslmode"), "{e}");
        let bad = StoreSettings {
            lease_secs: 1,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "lease_secs");
        assert!(StoreSettings::default().validate().is_ok());
    }
}
