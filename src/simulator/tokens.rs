//! Signed tokens the simulator hands out: OAuth2 access tokens (JWT, HS256, with the
//! client's domains as a claim) and presigned attachment URLs (also JWTs, short-lived).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub domains: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub jti: String,
}

/// Claims of a presigned URL: which file, which operation, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresignClaims {
    /// `get` for attachment downloads, `put` for report-attachment uploads.
    pub op: String,
    pub domain: String,
    pub appointment_id: String,
    pub guid: String,
    #[serde(default)]
    pub disposition: Option<String>,
    pub exp: i64,
}

pub const ISSUER: &str = "qubs-simulator";

/// An HMAC key; rotating it invalidates every token issued before.
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    pub fn random() -> SigningKey {
        SigningKey(rand::random::<[u8; 32]>().to_vec())
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.0),
        )
        .expect("HS256 signing cannot fail")
    }

    /// Verifies signature and expiry (to the second, no leeway).
    pub fn verify<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        jsonwebtoken::decode::<T>(token, &DecodingKey::from_secret(&self.0), &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "token has expired".to_string()
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "token signature is not valid".to_string()
                }
                _ => "token is malformed".to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let key = SigningKey::random();
        let now = jiff::Timestamp::now().as_second();
        let claims = AccessClaims {
            sub: "c".into(),
            domains: vec!["acme".into()],
            iat: now,
            exp: now + 60,
            iss: ISSUER.into(),
            jti: "1".into(),
        };
        let t = key.sign(&claims);
        assert_eq!(key.verify::<AccessClaims>(&t).unwrap().domains, ["acme"]);
        let expired = key.sign(&AccessClaims {
            exp: now - 1,
            ..claims
        });
        assert_eq!(
            key.verify::<AccessClaims>(&expired).unwrap_err(),
            "token has expired"
        );
        assert_eq!(
            SigningKey::random().verify::<AccessClaims>(&t).unwrap_err(),
            "token signature is not valid"
        );
    }
}
