//! OAuth2 client-credentials tokens for QUBS: cached, renewed before expiry, single-flight.
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
        refresh_margin: Duration,
    ) -> TokenSource {
        TokenSource {
            http,
            token_url,
            client_id,
            client_secret,
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
        let response = self
            .http
            .post(&self.token_url)
            .header("X-Correlation-Id", correlation_id.to_string())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| {
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
        // QUBS documents one hour; assume that when expires_in is missing.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        let margin = self.refresh_margin.min(lifetime / 2);
        let generation = self.fetched.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            %correlation_id,
            generation,
            lifetime_secs = lifetime.as_secs(),
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
