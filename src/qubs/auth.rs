//! OAuth2 client-credentials tokens for QUBS: cached, renewed before expiry, single-flight.
//!
//! QUBS documents only the bearer JWT, not how to get one, so the request is configurable:
//! credentials in the form body (`client_secret_post`) or as HTTP Basic
//! (`client_secret_basic`), with optional `scope` and `audience`. The lifetime comes from
//! `expires_in`, else from the JWT's own `exp` claim, else one hour.
//!
//! One mutex guards the cached token and is held while a new one is fetched, so a hundred
//! calls arriving with no valid token cause exactly one token request; the others wait and
//! then reuse it. After a 401 the caller invalidates the token *it used* (by generation), so
//! concurrent 401s on one stale token also lead to a single re-authentication.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use super::problem::{Error, ErrorKind};
use crate::config::{AuthSettings, ClientAuthMethod};

/// Assumed when neither `expires_in` nor the token's `exp` says (QUBS's one hour).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub struct AccessToken {
    pub value: SecretString,
    /// Counts tokens fetched by this source; identifies which one a 401 refers to.
    pub generation: u64,
    renew_at: Instant,
}

/// Fetches and caches tokens from the OAuth2 token endpoint.
pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: SecretString,
    auth: AuthSettings,
    refresh_margin: Duration,
    cached: Mutex<Option<AccessToken>>,
    fetched: AtomicU64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenSource {
    pub fn new(
        http: reqwest::Client,
        token_url: String,
        client_id: String,
        client_secret: SecretString,
        auth: AuthSettings,
        refresh_margin: Duration,
    ) -> TokenSource {
        TokenSource {
            http,
            token_url,
            client_id,
            client_secret,
            auth,
            refresh_margin,
            cached: Mutex::new(None),
            fetched: AtomicU64::new(0),
        }
    }

    /// How many tokens have been fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// A token valid for a while yet, fetching one if needed (one fetch at a time); the
    /// flag says whether this call fetched it.
    pub async fn token(&self, correlation_id: Uuid) -> Result<(AccessToken, bool), Error> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok((token.clone(), false));
        }
        let token = self.fetch(correlation_id).await?;
        *cached = Some(token.clone());
        Ok((token, true))
    }

    /// Forget the token of `generation` (QUBS refused it); a newer one is kept.
    pub async fn invalidate(&self, generation: u64) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|t| t.generation == generation) {
            *cached = None;
        }
    }

    /// `body` as text with the client secret, as sent and as form-encoded, cut out.
    fn redacted(&self, body: &[u8]) -> String {
        let secret = self.client_secret.expose_secret();
        let text = String::from_utf8_lossy(body);
        if secret.is_empty() {
            return text.into_owned();
        }
        let encoded = serde_urlencoded::to_string([("", secret)]).unwrap_or_default();
        let encoded = encoded.trim_start_matches('=');
        let mut text = text.replace(secret, "[secret]");
        if !encoded.is_empty() {
            text = text.replace(encoded, "[secret]");
        }
        text
    }

    async fn fetch(&self, correlation_id: Uuid) -> Result<AccessToken, Error> {
        let fail = |status: Option<StatusCode>, reason: String| Error {
            operation: "POST oauth2 token",
            correlation_id,
            attempts: 1,
            kind: ErrorKind::Token { status, reason },
            retry_after: None,
        };
        let started = Instant::now();
        let mut form = vec![("grant_type", "client_credentials")];
        let mut request = self
            .http
            .post(&self.token_url)
            .header("X-Correlation-Id", correlation_id.to_string());
        match self.auth.method {
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", self.client_id.as_str()));
                form.push(("client_secret", self.client_secret.expose_secret()));
            }
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: each part form-encoded before the Basic encoding.
                let encode = |s: &str| serde_urlencoded::to_string([("", s)]).unwrap_or_default();
                let id = encode(&self.client_id);
                let secret = encode(self.client_secret.expose_secret());
                request = request.basic_auth(
                    id.trim_start_matches('='),
                    Some(secret.trim_start_matches('=')),
                );
            }
        }
        if let Some(scope) = &self.auth.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &self.auth.audience {
            form.push(("audience", audience));
        }
        let response = request.form(&form).send().await.map_err(|e| {
            let mut err = super::client::transport_error(&e, "POST oauth2 token");
            err.correlation_id = correlation_id;
            err
        })?;
        let status = response.status();
        let retry_after = super::retry::parse_retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| {
            let mut err = super::client::transport_error(&e, "POST oauth2 token");
            err.correlation_id = correlation_id;
            err
        })?;
        if !status.is_success() {
            // A token endpoint (or a proxy before it) may echo the form it was sent.
            let body = self.redacted(&body);
            let reason = match serde_json::from_slice::<OAuthError>(body.as_bytes()) {
                Ok(e) => match e.error_description {
                    Some(d) => format!("{}: {d}", e.error),
                    None => e.error,
                },
                Err(_) => super::problem::excerpt(body.as_bytes(), 200),
            };
            let mut err = fail(Some(status), reason);
            err.retry_after = retry_after;
            return Err(err);
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            // serde quotes the offending value ("invalid type: string \"...\""), which here
            // could be the token: name the missing field, else only the position.
            let what = match e.to_string() {
                m if m.starts_with("missing field") => m,
                _ => crate::domain::json_error(&e),
            };
            fail(Some(status), format!("token response is not valid: {what}"))
        })?;
        if let Some(t) = &parsed.token_type
            && !t.eq_ignore_ascii_case("bearer")
        {
            return Err(fail(
                Some(status),
                format!("token_type `{t}` is not Bearer"),
            ));
        }
        let (lifetime, lifetime_from) = match parsed.expires_in {
            Some(secs) => (Duration::from_secs(secs), "expires_in"),
            None => match jwt_expiry(&parsed.access_token) {
                Some(exp) => (exp, "the token's exp claim"),
                None => (DEFAULT_LIFETIME, "the one-hour default"),
            },
        };
        let margin = self.refresh_margin.min(lifetime / 2);
        let generation = self.fetched.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            %correlation_id,
            generation,
            lifetime_secs = lifetime.as_secs(),
            lifetime_from,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "QUBS access token obtained"
        );
        Ok(AccessToken {
            value: SecretString::from(parsed.access_token),
            generation,
            renew_at: started + lifetime - margin,
        })
    }
}

/// The time left until a JWT's `exp` claim, read without verifying the token (the bridge
/// only needs to know when to renew it; QUBS checks it). `None` when the token is not a
/// JWT, has no `exp`, or is already expired.
fn jwt_expiry(token: &str) -> Option<Duration> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()? as i64;
    let left = exp - jiff::Timestamp::now().as_second();
    (left > 0).then(|| Duration::from_secs(left as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"HS256"}"#),
            b64.encode(claims.to_string())
        )
    }

    #[test]
    fn jwt_expiry_reads_exp_and_refuses_what_it_cannot_read() {
        let now = jiff::Timestamp::now().as_second();
        let left = jwt_expiry(&jwt(serde_json::json!({"exp": now + 600}))).unwrap();
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
        assert_eq!(jwt_expiry(&jwt(serde_json::json!({"exp": now - 5}))), None);
        assert_eq!(jwt_expiry(&jwt(serde_json::json!({"sub": "x"}))), None);
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.%%%.c"), None);
    }
}
