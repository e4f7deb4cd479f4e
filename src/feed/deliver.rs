//! Destinations: each drains its own durable queue to an MLLP consumer or a directory.
//!
//! One message at a time on one connection, so a consumer sees messages in the order they
//! were found; the store hands out at most one message per ordering key per round and never
//! one behind an earlier pending message of its key. Outcomes are recorded a round at a
//! time (one commit for up to a round's messages): a crash in between resends those with
//! their original MSH-10.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::{
    AckPolicy, DestinationKind, DestinationSettings, DueDelivery, Feed, Ordering, Outcome,
};
use crate::hl7::er7;
use crate::mllp::{ClientError, ClientTls, MllpClient};
use crate::store::leader::Term;
use crate::store::now_ms;

/// Messages a destination takes from the store per round.
const ROUND: usize = 256;
/// How often this destination's queue gauges are refreshed from the store.
const GAUGE_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub destination: String,
    pub outcome: String,
}

/// The feed's Prometheus metrics (destination names and event kinds only).
#[derive(Default)]
pub struct FeedMetrics {
    pub events: Family<KindLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub queue_depth: Family<DestinationLabels, Gauge>,
    pub oldest_pending_seconds: Family<DestinationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub poll_failures: Counter,
    pub mapping_failures: Counter,
}

impl FeedMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "feed_events",
            "Order feed events found, by kind (new, changed, removed)",
            self.events.clone(),
        );
        registry.register(
            "feed_deliveries",
            "Delivery attempts by destination and outcome (delivered, retry, dead)",
            self.deliveries.clone(),
        );
        registry.register(
            "feed_queue_depth",
            "Messages waiting for each destination",
            self.queue_depth.clone(),
        );
        registry.register(
            "feed_oldest_pending_seconds",
            "Age of each destination's oldest waiting message (0 when none)",
            self.oldest_pending_seconds.clone(),
        );
        registry.register(
            "feed_poll_failures",
            "Polls of QUBS that failed (retried with back-off)",
            self.poll_failures.clone(),
        );
        registry.register(
            "feed_mapping_failures",
            "Orders the feed mapping could not render (retried at the next poll)",
            self.mapping_failures.clone(),
        );
    }
}

/// What one attempt came to.
enum Attempt {
    /// The message has an outcome.
    Done(Outcome),
    /// The destination cannot be reached; the message was not attempted. Back off.
    Unreachable(String),
}

/// Where messages go.
enum Sink {
    Mllp {
        address: String,
        tls: Option<ClientTls>,
        connection: Option<Box<MllpClient>>,
    },
    File {
        directory: PathBuf,
    },
}

/// Drains one destination until its term of leadership ends.
pub async fn run(
    feed: Arc<Feed>,
    settings: DestinationSettings,
    metrics: Arc<FeedMetrics>,
    term: Term,
) {
    let label = DestinationLabels {
        destination: settings.name.clone(),
    };
    drain(&feed, &settings, &metrics, &term.stop, &term.lost).await;
    // Another replica's numbers from now on.
    metrics.queue_depth.remove(&label);
    metrics.oldest_pending_seconds.remove(&label);
}

async fn drain(
    feed: &Feed,
    settings: &DestinationSettings,
    metrics: &FeedMetrics,
    shutdown: &CancellationToken,
    lost: &CancellationToken,
) {
    let name = settings.name.clone();
    let mut sink = match sink(settings) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(destination = %name, error = %e, "feed destination cannot start");
            feed.destination_error(&name, e).await;
            return;
        }
    };
    let strict = settings.ordering == Ordering::Strict;
    let label = DestinationLabels {
        destination: name.clone(),
    };
    let mut backoff = settings.backoff();
    let mut gauges_at = Instant::now() - GAUGE_EVERY;
    // Whether `feed status` may show an error that a clean round should clear (one from
    // before a restart, too).
    let mut error_shown = true;
    loop {
        if gauges_at.elapsed() >= GAUGE_EVERY {
            gauges_at = Instant::now();
            if let Ok(s) = feed.destination_status_of(&name).await {
                metrics
                    .queue_depth
                    .get_or_create(&label)
                    .set(s.pending as i64);
                metrics.oldest_pending_seconds.get_or_create(&label).set(
                    s.oldest_pending_at_ms
                        .map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0),
                );
            }
        }
        // Registered before looking, so that a queue filled meanwhile is not missed.
        let queued = feed.queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let due = match feed.due(&name, strict, ROUND).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(destination = %name, error = %e, "feed store read failed");
                Vec::new()
            }
        };
        if due.is_empty() {
            let wait = match feed.next_due_in(&name).await {
                Ok(Some(d)) => d.clamp(Duration::from_millis(1), Duration::from_secs(1)),
                _ => GAUGE_EVERY,
            };
            tokio::select! {
                _ = &mut queued => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        let mut outcomes = Vec::with_capacity(due.len());
        let mut unreachable = None;
        for d in &due {
            if shutdown.is_cancelled() {
                break;
            }
            let tried = tokio::select! {
                a = attempt(&mut sink, settings, d) => a,
                // The lead is gone: stop sending now; the next leader sends it again.
                _ = lost.cancelled() => break,
            };
            match tried {
                Attempt::Done(outcome) => {
                    let label = match &outcome {
                        Outcome::Delivered { .. } => "delivered",
                        Outcome::Retry { .. } => "retry",
                        Outcome::Dead { .. } => "dead",
                    };
                    metrics
                        .deliveries
                        .get_or_create(&DeliveryLabels {
                            destination: name.clone(),
                            outcome: label.into(),
                        })
                        .inc();
                    if !matches!(outcome, Outcome::Delivered { .. }) {
                        tracing::warn!(
                            destination = %name,
                            domain = %d.domain,
                            appointment_id = %d.appointment_id,
                            control_id = %d.control_id,
                            outcome = ?outcome,
                            "feed message not delivered"
                        );
                    }
                    outcomes.push((d.id, outcome));
                }
                Attempt::Unreachable(reason) => {
                    unreachable = Some(reason);
                    break;
                }
            }
        }
        let delivered = outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Delivered { .. }));
        let failed = unreachable.is_some()
            || outcomes
                .iter()
                .any(|(_, o)| !matches!(o, Outcome::Delivered { .. }));
        if !outcomes.is_empty()
            && let Err(e) = feed.settle(&name, outcomes).await
        {
            // Unrecorded outcomes are attempted again: at least once, never lost.
            tracing::error!(destination = %name, error = %e, "feed store write failed");
        }
        if failed {
            error_shown = true;
        } else if delivered && error_shown {
            // The consumer takes messages again: an old "connect failed" is history.
            feed.destination_recovered(&name).await;
            error_shown = false;
        }
        match unreachable {
            None => backoff.reset(),
            Some(reason) => {
                tracing::warn!(destination = %name, error = %reason, "feed destination unreachable; backing off");
                feed.destination_error(&name, reason).await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
}

fn sink(settings: &DestinationSettings) -> Result<Sink, String> {
    match settings.kind {
        DestinationKind::Mllp => {
            let address = settings.address.clone().unwrap_or_default();
            let tls = match &settings.tls {
                None => None,
                Some(t) => {
                    let host = address.rsplit_once(':').map_or("", |(h, _)| h);
                    let server_name = t.server_name.as_deref().unwrap_or(host);
                    let identity = t.cert_file.as_deref().zip(t.key_file.as_deref());
                    Some(
                        ClientTls::from_pem_files(&t.ca_file, identity, server_name)
                            .map_err(|e| e.to_string())?,
                    )
                }
            };
            Ok(Sink::Mllp {
                address,
                tls,
                connection: None,
            })
        }
        DestinationKind::File => {
            let directory = settings.directory.clone().unwrap_or_default();
            std::fs::create_dir_all(&directory)
                .map_err(|e| format!("cannot create {}: {e}", directory.display()))?;
            Ok(Sink::File { directory })
        }
    }
}

async fn attempt(sink: &mut Sink, settings: &DestinationSettings, d: &DueDelivery) -> Attempt {
    match sink {
        Sink::Mllp {
            address,
            tls,
            connection,
        } => {
            if connection.is_none() {
                match MllpClient::connect(
                    address.as_str(),
                    tls.as_ref(),
                    settings.connect_timeout(),
                )
                .await
                {
                    Ok(c) => *connection = Some(Box::new(c)),
                    Err(e) => return Attempt::Unreachable(format!("{address}: {e}")),
                }
            }
            let client = connection.as_mut().expect("connected above");
            match client
                .call(d.message.as_bytes(), settings.ack_timeout())
                .await
            {
                Ok(reply) => {
                    let verdict = judge_ack(&reply, &d.control_id);
                    if verdict.resync {
                        // A reply to another message: whatever is in flight on this
                        // connection can no longer be matched up. Start afresh.
                        *connection = None;
                    }
                    Attempt::Done(apply(settings, d, verdict))
                }
                Err(e) => {
                    // Timeouts and half-read frames leave the stream out of step.
                    *connection = None;
                    let reason = match e {
                        ClientError::ReplyTimeout(t) => {
                            format!("no ACK within {} s", t.as_secs())
                        }
                        other => other.to_string(),
                    };
                    Attempt::Done(retry(settings, d, reason, None))
                }
            }
        }
        Sink::File { directory } => match write_file(directory, d).await {
            Ok(()) => Attempt::Done(Outcome::Delivered { ack_code: None }),
            Err(e) => Attempt::Unreachable(format!("{}: {e}", directory.display())),
        },
    }
}

/// What an ACK says about a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// MSA-1 when readable.
    pub code: Option<String>,
    pub kind: VerdictKind,
    /// The connection should be dropped (the reply belongs to another message).
    pub resync: bool,
    /// For operators: codes and locations only, never the consumer's free text.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    Accepted,
    Error,
    Rejected,
    /// Not a usable ACK at all.
    Malformed,
}

/// Reads a consumer's reply to the message with MSH-10 `control_id`.
pub fn judge_ack(reply: &[u8], control_id: &str) -> Verdict {
    let malformed = |detail: String, resync: bool| Verdict {
        code: None,
        kind: VerdictKind::Malformed,
        resync,
        detail,
    };
    let text = er7::decode_bytes(reply);
    let message = match er7::Message::parse(&text) {
        Ok(m) => m,
        Err(e) => return malformed(format!("malformed ACK: {e}"), false),
    };
    let Some(msa) = message.segments().find(|s| s.id() == "MSA") else {
        return malformed("malformed ACK: no MSA segment".into(), false);
    };
    let code = msa.field(1).unwrap_or("").trim().to_string();
    let acked = msa.field(2).unwrap_or("").trim();
    if acked != control_id {
        return Verdict {
            code: Some(code),
            kind: VerdictKind::Malformed,
            resync: true,
            detail: format!("ACK is for MSH-10 `{acked}`, not `{control_id}`"),
        };
    }
    let kind = match code.as_str() {
        "AA" | "CA" => VerdictKind::Accepted,
        "AE" | "CE" => VerdictKind::Error,
        "AR" | "CR" => VerdictKind::Rejected,
        _ => {
            return malformed(
                format!("malformed ACK: MSA-1 `{code}` is not an ACK code"),
                false,
            );
        }
    };
    // ERR-3 (v2.5+) or ERR-1 (earlier) carries the error code and location; the consumer's
    // text may quote patient data, so it is left out.
    let err = message
        .segments()
        .find(|s| s.id() == "ERR")
        .map(|s| {
            let code = s.field(3).filter(|c| !c.is_empty()).unwrap_or("");
            let location = s.field(2).or(s.field(1)).unwrap_or("");
            format!(" (ERR code `{code}` at `{location}`)")
        })
        .unwrap_or_default();
    Verdict {
        detail: format!("consumer answered {code}{err}"),
        code: Some(code),
        kind,
        resync: false,
    }
}

fn apply(settings: &DestinationSettings, d: &DueDelivery, v: Verdict) -> Outcome {
    let policy = match v.kind {
        VerdictKind::Accepted => AckPolicy::Accept,
        VerdictKind::Error => settings.on_ae,
        VerdictKind::Rejected => settings.on_ar,
        VerdictKind::Malformed => AckPolicy::Retry,
    };
    match policy {
        AckPolicy::Accept => Outcome::Delivered { ack_code: v.code },
        AckPolicy::Retry => retry(settings, d, v.detail, v.code),
        AckPolicy::Dead => Outcome::Dead {
            reason: v.detail,
            ack_code: v.code,
        },
    }
}

/// Another attempt after back-off, or a dead letter once `max_attempts` is spent.
fn retry(
    settings: &DestinationSettings,
    d: &DueDelivery,
    reason: String,
    ack_code: Option<String>,
) -> Outcome {
    let attempts = d.attempts + 1;
    if settings.max_attempts > 0 && attempts >= settings.max_attempts {
        return Outcome::Dead {
            reason: format!("{reason}; gave up after {attempts} attempts"),
            ack_code,
        };
    }
    Outcome::Retry {
        delay: settings.backoff().delay(d.attempts),
        reason,
    }
}

/// Writes the message as `<event id>-<MSH-10>.hl7`, atomically: a temporary file, synced,
/// renamed into place, the directory synced. A consumer never sees half a file; a resend
/// after a crash rewrites the same name.
async fn write_file(directory: &Path, d: &DueDelivery) -> std::io::Result<()> {
    let name = format!("{:012}-{}.hl7", d.event_id, d.control_id);
    let path = directory.join(&name);
    let temp = directory.join(format!(".{name}.tmp"));
    let message = d.message.clone();
    let directory = directory.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(message.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(&directory)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(code: &str, control: &str) -> Vec<u8> {
        format!("MSH|^~\\&|RIS|H|QUBS|Q|20261127||ACK^O01|A1|P|2.5.1\rMSA|{code}|{control}\r")
            .into_bytes()
    }

    #[test]
    fn acks_are_judged_by_code_and_control_id() {
        assert_eq!(
            judge_ack(&ack("AA", "C1"), "C1").kind,
            VerdictKind::Accepted
        );
        assert_eq!(
            judge_ack(&ack("CA", "C1"), "C1").kind,
            VerdictKind::Accepted
        );
        assert_eq!(judge_ack(&ack("AE", "C1"), "C1").kind, VerdictKind::Error);
        assert_eq!(
            judge_ack(&ack("CR", "C1"), "C1").kind,
            VerdictKind::Rejected
        );
        let wrong = judge_ack(&ack("AA", "C2"), "C1");
        assert_eq!((wrong.kind, wrong.resync), (VerdictKind::Malformed, true));
        assert!(wrong.detail.contains("`C2`"), "{}", wrong.detail);
        let junk = judge_ack(b"hello", "C1");
        assert_eq!(junk.kind, VerdictKind::Malformed);
        let no_msa = judge_ack(b"MSH|^~\\&|RIS|H|||20261127||ACK|A1|P|2.5.1\r", "C1");
        assert!(no_msa.detail.contains("no MSA"), "{}", no_msa.detail);
        let odd = judge_ack(&ack("OK", "C1"), "C1");
        assert_eq!(odd.kind, VerdictKind::Malformed);
    }

    #[test]
    fn an_error_ack_reports_codes_not_text() {
        let reply = b"MSH|^~\\&|RIS|H|||20261127||ACK|A1|P|2.5.1\rMSA|AE|C1|Patient SMITH unknown\rERR||PID^1^3|204^Unknown key identifier^HL70357|E||||Patient SMITH unknown\r";
        let v = judge_ack(reply, "C1");
        assert_eq!(v.kind, VerdictKind::Error);
        assert!(v.detail.contains("204"), "{}", v.detail);
        assert!(!v.detail.contains("SMITH"), "{}", v.detail);
    }
}
