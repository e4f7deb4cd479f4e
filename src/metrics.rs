//! Prometheus metrics, served as text on the admin endpoint's `/metrics`.
//!
//! Labels carry only operation names, status codes, caller names and code-table names —
//! never patient data or ids.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::qubs::CallObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QubsLabels {
    pub operation: String,
    /// HTTP status, or `error` when no answer came (timeout, connection).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    pub domain: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the bridge exports.
pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
    pub qubs_requests: Family<QubsLabels, Counter>,
    pub qubs_seconds: Family<QubsLabels, Histogram, fn() -> Histogram>,
    pub qubs_token_refreshes: Counter,
    /// Pending pages none of whose items had an appointment id, by domain.
    pub qubs_pages_without_ids: Family<DomainLabels, Counter>,
    pub mapping_reloads: Family<OutcomeLabels, Counter>,
    /// 1 while the loaded mapping set is the last good one but a newer edit failed to load.
    pub mapping_reload_failing: Gauge,
    /// Values code tables did not have (`mapping_unmapped_values{mapping,table}`).
    pub unmapped: std::sync::Arc<crate::unmapped::UnmappedValues>,
    /// Outbox results by state: pending (the depth) and dead.
    pub outbox_results: Family<StateLabels, Gauge>,
    pub outbox_oldest_pending_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Results newly committed to the outbox (retransmissions are not counted).
    pub results_stored: Counter,
    /// Submission attempts by outcome: submitted, retry, dead.
    pub outbox_attempts: Family<OutcomeLabels, Counter>,
    pub outbox_attempt_seconds: Histogram,
    /// The MLLP listener's connections and frames.
    pub mllp: std::sync::Arc<crate::mllp::MllpMetrics>,
    /// The order feed's events, deliveries and queues.
    pub feed: std::sync::Arc<crate::feed::deliver::FeedMetrics>,
    /// The store's leaders, takeovers, claims, errors and pool.
    pub store: std::sync::Arc<crate::store::StoreMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("qubs_bridge");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let qubs_requests = Family::<QubsLabels, Counter>::default();
        let qubs_seconds = Family::<QubsLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let qubs_token_refreshes = Counter::default();
        let qubs_pages_without_ids = Family::<DomainLabels, Counter>::default();
        let mapping_reloads = Family::<OutcomeLabels, Counter>::default();
        let mapping_reload_failing = Gauge::default();
        let outbox_results = Family::<StateLabels, Gauge>::default();
        let outbox_oldest_pending_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let outbox_attempts = Family::<OutcomeLabels, Counter>::default();
        let outbox_attempt_seconds = latency_histogram();
        let results_stored = Counter::default();
        registry.register(
            "results_stored",
            "Results newly committed to the outbox (retransmissions are not counted)",
            results_stored.clone(),
        );
        registry.register(
            "outbox_results",
            "Results in the durable outbox: pending (the depth) and dead; submitted ones are counted by outbox_attempts",
            outbox_results.clone(),
        );
        registry.register(
            "outbox_oldest_pending_seconds",
            "Age of the oldest result not yet settled (0 when none)",
            outbox_oldest_pending_seconds.clone(),
        );
        registry.register(
            "outbox_attempts",
            "Submission attempts by outcome (retry = will be tried again, dead = dead letter)",
            outbox_attempts.clone(),
        );
        registry.register(
            "outbox_attempt_seconds",
            "Time one submission attempt took (report and attachments)",
            outbox_attempt_seconds.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code",
            rpc_requests.clone(),
        );
        registry.register(
            "grpc_request_seconds",
            "gRPC call latency by method and status code",
            rpc_seconds.clone(),
        );
        registry.register(
            "qubs_requests",
            "QUBS API requests by operation and HTTP status",
            qubs_requests.clone(),
        );
        registry.register(
            "qubs_request_seconds",
            "QUBS API request latency",
            qubs_seconds.clone(),
        );
        registry.register(
            "qubs_token_refreshes",
            "OAuth2 tokens fetched from QUBS",
            qubs_token_refreshes.clone(),
        );
        registry.register(
            "qubs_pending_pages_without_ids",
            "Non-empty pages of the pending list in which no item had an appointmentId (QUBS may name the id differently; nothing can be read)",
            qubs_pages_without_ids.clone(),
        );
        registry.register(
            "mapping_reloads",
            "Mapping set (re)loads by outcome",
            mapping_reloads.clone(),
        );
        registry.register(
            "mapping_reload_failing",
            "1 while the newest mapping files fail to load (the last good set is in use)",
            mapping_reload_failing.clone(),
        );
        let unmapped = std::sync::Arc::new(crate::unmapped::UnmappedValues::default());
        unmapped.register(&mut registry);
        let mllp = std::sync::Arc::new(crate::mllp::MllpMetrics::default());
        mllp.register(&mut registry);
        let feed = std::sync::Arc::new(crate::feed::deliver::FeedMetrics::default());
        feed.register(&mut registry);
        let store = std::sync::Arc::new(crate::store::StoreMetrics::default());
        store.register(&mut registry);
        Metrics {
            registry,
            mllp,
            feed,
            store,
            rpc_requests,
            rpc_seconds,
            qubs_requests,
            qubs_seconds,
            qubs_token_refreshes,
            qubs_pages_without_ids,
            mapping_reloads,
            mapping_reload_failing,
            unmapped,
            outbox_results,
            outbox_oldest_pending_seconds,
            results_stored,
            outbox_attempts,
            outbox_attempt_seconds,
        }
    }

    /// Publishes the outbox's counts.
    pub fn outbox_stats(&self, stats: &crate::outbox::Stats, now_ms: i64) {
        for (state, n) in [
            ("pending", Some(stats.pending)),
            ("submitted", stats.submitted),
            ("dead", Some(stats.dead)),
        ] {
            let Some(n) = n else { continue };
            self.outbox_results
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.outbox_oldest_pending_seconds
            .set(stats.oldest_pending_age_secs(now_ms));
    }

    /// Records one submission attempt.
    pub fn outbox_attempt(&self, outcome: &str, elapsed: Duration) {
        self.outbox_attempts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.outbox_attempt_seconds.observe(elapsed.as_secs_f64());
    }

    /// Records one finished gRPC call.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let labels = RpcLabels {
            method: method.to_string(),
            code: format!("{code:?}"),
        };
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl CallObserver for Metrics {
    fn qubs_response(&self, operation: &'static str, status: Option<u16>, elapsed: Duration) {
        let labels = QubsLabels {
            operation: operation.to_string(),
            status: status.map_or_else(|| "error".to_string(), |s| s.to_string()),
        };
        self.qubs_requests.get_or_create(&labels).inc();
        self.qubs_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    fn token_fetched(&self) {
        self.qubs_token_refreshes.inc();
    }

    fn pending_page_without_ids(&self, domain: &str) {
        self.qubs_pages_without_ids
            .get_or_create(&DomainLabels {
                domain: domain.to_string(),
            })
            .inc();
    }
}
