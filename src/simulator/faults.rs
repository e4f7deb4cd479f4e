//! Fault injection: rules that make chosen requests slow, fail, or lose their connection.

use serde::{Deserialize, Serialize};

/// What to do to a matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Wait this long, then handle the request normally (longer than the client's timeout
    /// makes a timeout).
    Latency { ms: u64 },
    /// Answer with this status and a problem body, without handling the request.
    Status {
        status: u16,
        /// `Retry-After` header value (seconds or an HTTP date).
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// Close the connection without handling the request.
    DropConnection,
    /// Handle the request (a report is stored), then close the connection before the answer
    /// reaches the client: the ambiguous failure idempotency keys exist for.
    DropAfterProcessing,
    /// Answer 200 with a truncated JSON body.
    MalformedJson,
    /// Answer with this status and a body that is not a problem document (a proxy's HTML
    /// page, plain text...).
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Handle the request, then send the body `chunk_bytes` at a time, `delay_ms` apart.
    SlowBody { chunk_bytes: usize, delay_ms: u64 },
    /// A report POST that takes `ms` to process, its `Idempotency-Key` in progress
    /// meanwhile (a duplicate then gets 409); elsewhere, latency before handling.
    SlowProcessing { ms: u64 },
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Latency { .. } => "latency",
            Fault::Status { .. } => "status",
            Fault::DropConnection => "drop_connection",
            Fault::DropAfterProcessing => "drop_after_processing",
            Fault::MalformedJson => "malformed_json",
            Fault::Raw { .. } => "raw",
            Fault::SlowBody { .. } => "slow_body",
            Fault::SlowProcessing { .. } => "slow_processing",
        }
    }
}

/// Which requests a fault applies to, and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// HTTP method to match (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Substring of the request path to match (any when absent).
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Apply to this many matching requests, then retire (unlimited when absent).
    #[serde(default)]
    pub times: Option<u32>,
    /// Apply to this share of matching requests, 0.0–1.0 (all when absent).
    #[serde(default)]
    pub probability: Option<f64>,
    pub fault: Fault,
}

impl FaultRule {
    /// A rule for every request; narrow it with [`FaultRule::method`] and [`FaultRule::path`].
    pub fn new(fault: Fault) -> FaultRule {
        FaultRule {
            method: None,
            path_contains: None,
            times: None,
            probability: None,
            fault,
        }
    }

    pub fn method(mut self, method: &str) -> FaultRule {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    pub fn path(mut self, contains: &str) -> FaultRule {
        self.path_contains = Some(contains.to_string());
        self
    }

    pub fn times(mut self, n: u32) -> FaultRule {
        self.times = Some(n);
        self
    }

    pub fn probability(mut self, p: f64) -> FaultRule {
        self.probability = Some(p.clamp(0.0, 1.0));
        self
    }

    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
            && self.times != Some(0)
    }
}

/// Picks the fault for a request from the rules, consuming one use of a counted rule.
pub(crate) fn take_fault(rules: &mut [FaultRule], method: &str, path: &str) -> Option<Fault> {
    for rule in rules.iter_mut() {
        if !rule.matches(method, path) {
            continue;
        }
        if let Some(p) = rule.probability
            && rand::random::<f64>() >= p
        {
            continue;
        }
        if let Some(n) = rule.times.as_mut() {
            *n -= 1;
        }
        return Some(rule.fault.clone());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_rules_retire_and_filters_apply() {
        let mut rules = vec![
            FaultRule::new(Fault::DropConnection)
                .method("post")
                .path("/report")
                .times(1),
            FaultRule::new(Fault::Latency { ms: 5 }).path("/pending"),
        ];
        assert_eq!(take_fault(&mut rules, "GET", "/x/report"), None);
        assert_eq!(
            take_fault(&mut rules, "POST", "/x/report"),
            Some(Fault::DropConnection)
        );
        assert_eq!(take_fault(&mut rules, "POST", "/x/report"), None);
        assert_eq!(
            take_fault(&mut rules, "GET", "/acme/reporting/appointments/pending"),
            Some(Fault::Latency { ms: 5 })
        );
    }

    #[test]
    fn rules_read_from_json() {
        let rule: FaultRule = serde_json::from_str(
            r#"{"path_contains":"/report","probability":0.3,"fault":{"kind":"status","status":503}}"#,
        )
        .unwrap();
        assert_eq!(
            rule.fault,
            Fault::Status {
                status: 503,
                retry_after: None
            }
        );
    }
}
