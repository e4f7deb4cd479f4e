//! The store's metrics: leadership, takeovers, claim latency, database errors, pool use.

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::PoolUse;
use super::leader::Role;

/// `role` and, by role, `domain` or `destination`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LeaderLabels {
    pub role: Role,
    pub scope: String,
}

impl EncodeLabelSet for LeaderLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("role", self.role.as_str()).encode(encoder.encode_label())?;
        match self.role.scope_label() {
            Some(key) => (key, self.scope.as_str()).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PoolLabels {
    pub state: String,
}

/// Every store metric; registered by [`crate::metrics::Metrics`].
pub struct StoreMetrics {
    /// 1 while this replica leads the role.
    pub leader: Family<LeaderLabels, Gauge>,
    /// Work taken over from a replica whose lease ran out, by kind (`outbox_claim`, or a
    /// leader role).
    pub takeovers: Family<KindLabels, Counter>,
    /// Time to claim due results.
    pub claim_seconds: Histogram,
    /// Database operations that failed, by operation.
    pub errors: Family<OperationLabels, Counter>,
    /// Pooled connections by state (`in_use`, `idle`), and callers waiting for one.
    pub pool: Family<PoolLabels, Gauge>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            leader: Family::default(),
            takeovers: Family::default(),
            // 0.1 ms … ~3 s
            claim_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            errors: Family::default(),
            pool: Family::default(),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_leader",
            "1 while this replica leads a role: polling a domain, draining a destination, retention",
            self.leader.clone(),
        );
        registry.register(
            "store_takeovers",
            "Work taken over from a replica whose lease ran out (outbox claims, leader roles)",
            self.takeovers.clone(),
        );
        registry.register(
            "store_claim_seconds",
            "Time to claim due outbox results",
            self.claim_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed (database unreachable, statement errors), by operation",
            self.errors.clone(),
        );
        registry.register(
            "store_pool_connections",
            "PostgreSQL connections of this replica's pool: in_use, idle, and callers waiting",
            self.pool.clone(),
        );
    }

    pub fn error(&self, operation: &str) {
        self.errors
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .inc();
    }

    pub fn takeover(&self, kind: &str) {
        self.takeovers
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn leading(&self, role: Role, scope: &str, leading: bool) {
        self.leader
            .get_or_create(&LeaderLabels {
                role,
                scope: scope.to_string(),
            })
            .set(i64::from(leading));
    }

    pub fn pool_use(&self, pool: PoolUse) {
        for (state, n) in [
            ("in_use", pool.size.saturating_sub(pool.idle)),
            ("idle", pool.idle),
            ("waiting", pool.waiting),
        ] {
            self.pool
                .get_or_create(&PoolLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
    }
}
