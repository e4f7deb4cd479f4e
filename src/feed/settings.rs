//! The `[feed]` section: what to watch and where to deliver.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The order feed's settings. Every field has a default; the feed is off until enabled.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedSettings {
    pub enabled: bool,
    /// Domains to watch; empty: every domain in `qubs.domains`.
    pub domains: Vec<String>,
    /// The order mapping that renders the messages (input `order`, output HL7).
    pub mapping: String,
    /// Time between the end of one poll and the start of the next.
    pub poll_interval_secs: u64,
    /// Each wait is spread by up to this fraction either way, so that several bridges do
    /// not poll QUBS in step.
    pub poll_jitter: f64,
    /// What the first poll of a domain does with the orders already pending.
    pub first_run: FirstRun,
    /// What an order leaving the pending list produces.
    pub on_removed: OnRemoved,
    /// What a new mapping-set version does to the orders consumers already have.
    pub on_mapping_change: OnMappingChange,
    /// Fetch each order's comments and alerts (one more QUBS call per new or polled order),
    /// so that messages carry them as NTE segments and comment edits count as changes.
    pub include_comments: bool,
    /// Orders assembled concurrently while polling.
    pub fetch_concurrency: usize,
    /// Back-off after a failed poll, doubling up to the maximum.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Events (and their settled deliveries) are kept this long for `WatchOrders` resumes.
    pub event_retention_hours: u64,
    pub destinations: Vec<DestinationSettings>,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            enabled: false,
            domains: Vec::new(),
            mapping: "orm_o01".into(),
            poll_interval_secs: 30,
            poll_jitter: 0.1,
            first_run: FirstRun::SendAll,
            on_removed: OnRemoved::Ignore,
            on_mapping_change: OnMappingChange::ResendChanged,
            include_comments: true,
            fetch_concurrency: 16,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            event_retention_hours: 72,
            destinations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstRun {
    /// Send every order pending at the first poll as new (a consumer starting empty).
    SendAll,
    /// Take the orders pending at the first poll as already known; send only what comes
    /// or changes after.
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRemoved {
    /// Forget the order quietly (it was reported, or cancelled in QUBS).
    Ignore,
    /// Send an event of kind `removed`: the ORM's ORC-1 comes from the `order_control`
    /// table (CA by default; DC where consumers expect discontinue).
    Send,
}

/// What the feed does when the mapping-set version changes (a reload, or a restart on
/// edited files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMappingChange {
    /// Leave consumers with what they have; orders go out under the new mapping when they
    /// next change in QUBS.
    Ignore,
    /// Re-map every tracked order and send an XO for each whose ORM now differs from the
    /// last one sent (MSH-7 and MSH-10 aside). The default: a mapping is changed to correct
    /// what consumers hold, and a change that alters no message sends nothing.
    ResendChanged,
}

/// One place messages go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationSettings {
    /// Unique; names the queue in the store, metrics and `feed status`.
    pub name: String,
    pub kind: DestinationKind,
    /// `mllp`: the consumer's `host:port`.
    pub address: Option<String>,
    /// `file`: the directory messages are dropped into (created if missing).
    pub directory: Option<PathBuf>,
    /// `mllp`: TLS towards the consumer.
    pub tls: Option<DestinationTls>,
    /// Domains this destination takes; empty: every watched domain.
    pub domains: Vec<String>,
    pub connect_timeout_secs: u64,
    /// How long to wait for the ACK of each message.
    pub ack_timeout_secs: u64,
    /// What an AE (or CE) answer means.
    pub on_ae: AckPolicy,
    /// What an AR (or CR) answer means.
    pub on_ar: AckPolicy,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Give up on a message (dead letter) after this many attempts; 0: never.
    pub max_attempts: u32,
    pub ordering: Ordering,
}

impl Default for DestinationSettings {
    fn default() -> Self {
        DestinationSettings {
            name: String::new(),
            kind: DestinationKind::Mllp,
            address: None,
            directory: None,
            tls: None,
            domains: Vec::new(),
            connect_timeout_secs: 5,
            ack_timeout_secs: 30,
            on_ae: AckPolicy::Dead,
            on_ar: AckPolicy::Retry,
            retry_initial_ms: 1000,
            retry_max_ms: 60_000,
            max_attempts: 0,
            ordering: Ordering::PerPatient,
        }
    }
}

impl DestinationSettings {
    /// Back-off between attempts of one message, and while the consumer is unreachable.
    pub fn backoff(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff::from_millis(self.retry_initial_ms, self.retry_max_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_secs(self.ack_timeout_secs)
    }

    /// What operators see as the target: the address or the directory.
    pub fn target(&self) -> String {
        match self.kind {
            DestinationKind::Mllp => self.address.clone().unwrap_or_default(),
            DestinationKind::File => self
                .directory
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    Mllp,
    File,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Mllp => "mllp",
            DestinationKind::File => "file",
        }
    }
}

/// TLS towards an MLLP consumer: the CA that signed its certificate, and a client
/// certificate when it wants mutual TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTls {
    pub ca_file: PathBuf,
    /// The name its certificate carries; default: the host of `address`.
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// What a negative ACK does to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// Count it as delivered (the consumer has logged it its own way).
    Accept,
    /// Send it again after back-off.
    Retry,
    /// Stop: a dead letter for operators; the next message of its key follows.
    Dead,
}

/// Which messages must arrive in the order they were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Per patient (per appointment when QUBS gives no patient id): one stuck message
    /// holds back only that patient's later messages.
    PerPatient,
    /// Per appointment.
    PerAppointment,
    /// Everything in order: one stuck message holds back the whole destination.
    Strict,
}

/// A setting that is out of range; `key` is the path within the feed section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

impl FeedSettings {
    /// The domains watched: the configured ones, or all.
    pub fn watched(&self, all: &[String]) -> Vec<String> {
        if self.domains.is_empty() {
            all.to_vec()
        } else {
            self.domains.clone()
        }
    }

    pub fn validate(&self, qubs_domains: &[String]) -> Result<(), SettingsError> {
        let err = |key: String, reason: String| Err(SettingsError { key, reason });
        if self.poll_interval_secs == 0 {
            return err("poll_interval_secs".into(), "must be at least 1".into());
        }
        if !(0.0..=0.5).contains(&self.poll_jitter) {
            return err("poll_jitter".into(), "must be between 0 and 0.5".into());
        }
        if self.fetch_concurrency == 0 {
            return err("fetch_concurrency".into(), "must be at least 1".into());
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return err(
                "retry_max_ms".into(),
                "retry_initial_ms must be at least 1 and retry_max_ms not below it".into(),
            );
        }
        if self.event_retention_hours == 0 {
            return err("event_retention_hours".into(), "must be at least 1".into());
        }
        for d in &self.domains {
            if !qubs_domains.contains(d) {
                return err(
                    "domains".into(),
                    format!("`{d}` is not one of qubs.domains"),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let key = |field: &str| format!("destinations[{i}].{field}");
            if d.name.trim().is_empty() {
                return err(key("name"), "every destination needs a name".into());
            }
            if !names.insert(d.name.as_str()) {
                return err(key("name"), format!("`{}` is used twice", d.name));
            }
            match d.kind {
                DestinationKind::Mllp => match &d.address {
                    None => return err(key("address"), "required for kind = \"mllp\"".into()),
                    Some(a)
                        if a.rsplit_once(':')
                            .is_none_or(|(_, p)| p.parse::<u16>().is_err()) =>
                    {
                        return err(key("address"), format!("`{a}` is not host:port"));
                    }
                    Some(_) => {}
                },
                DestinationKind::File => {
                    if d.directory.is_none() {
                        return err(key("directory"), "required for kind = \"file\"".into());
                    }
                }
            }
            if let Some(tls) = &d.tls
                && tls.cert_file.is_some() != tls.key_file.is_some()
            {
                return err(
                    key("tls"),
                    "cert_file and key_file go together (mutual TLS)".into(),
                );
            }
            if d.connect_timeout_secs == 0 || d.ack_timeout_secs == 0 {
                return err(
                    key("ack_timeout_secs"),
                    "connect_timeout_secs and ack_timeout_secs must be at least 1".into(),
                );
            }
            if d.retry_initial_ms == 0 || d.retry_max_ms < d.retry_initial_ms {
                return err(
                    key("retry_max_ms"),
                    "retry_initial_ms must be at least 1 and retry_max_ms not below it".into(),
                );
            }
            for dom in &d.domains {
                if !self.watched(qubs_domains).contains(dom) {
                    return err(key("domains"), format!("`{dom}` is not a watched domain"));
                }
            }
        }
        if self.enabled && self.destinations.is_empty() {
            tracing::info!("feed enabled without destinations: events go to WatchOrders only");
        }
        Ok(())
    }
}
