//! Re-sending what consumers already have after a mapping change.
//!
//! Each tracked order keeps the last ORM its consumers were sent. A resend re-maps the
//! order's stored document with the current mapping set, rendered as that last message was
//! (same event kind), and compares the two field by field with the golden runner's HL7
//! diff ([`crate::mapping::golden::diff::hl7`]), which leaves out MSH-7 and MSH-10: an order
//! whose message differs in nothing else is not sent again. One that differs is recorded as
//! a `changed` event (ORC-1 XO from the `order_control` table) with a delivery per
//! destination, like any change the watcher finds, so per-patient ordering, `WatchOrders`
//! cursors and retries apply to it unchanged.
//!
//! Two ways in: the watcher compares every tracked order when the mapping-set version
//! differs from the one the domain was last compared against (`on_mapping_change =
//! "resend_changed"`), and `qubs-bridge feed resend` asks for it by hand (gRPC
//! `ResendFeedOrders`), with a dry run that only counts and shows one order's differences.

use serde_json::{Value, json};

use super::{EventKind, Feed, NewEvent, Tracked};
use crate::mapping::golden::diff::{self, FieldDiff};
use crate::mapping::{Body, MapError, MapOptions, MappingSet, Unmapped};
use crate::store::StoreError;

/// Events recorded per transaction while resending a large domain.
const BATCH: usize = 200;

/// A feed message rendered for one order.
pub(crate) struct Rendered {
    pub message: String,
    pub control_id: String,
    pub unmapped: Vec<Unmapped>,
    pub version: String,
}

/// Why an order's feed message could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("feed.mapping `{0}` renders FHIR, not HL7; no feed message can be made")]
    NotHl7(String),
}

/// Sets `event.kind` in the order document and renders the feed's ORM^O01 with a new
/// MSH-10.
pub(crate) fn render(
    mappings: &MappingSet,
    mapping: &str,
    document: &mut Value,
    kind: EventKind,
) -> Result<Rendered, RenderError> {
    if let Value::Object(m) = document {
        m.insert("event".into(), json!({ "kind": kind.as_str() }));
    }
    let control_id = crate::hl7::writer::new_control_id();
    let options = MapOptions {
        control_id: Some(control_id.clone()),
        ..Default::default()
    };
    let output = mappings.map_order_with(mapping, document, &options)?;
    match output.body {
        Body::Hl7(message) => Ok(Rendered {
            message,
            control_id,
            unmapped: output.unmapped,
            version: output.version,
        }),
        Body::Fhir(_) => Err(RenderError::NotHl7(mapping.to_string())),
    }
}

/// What to resend.
#[derive(Debug, Clone)]
pub struct ResendRequest {
    pub domain: String,
    /// One tracked order; `None`: every order the domain's watch knows.
    pub appointment_id: Option<String>,
    /// Only orders whose message under the current mappings differs from the last one sent;
    /// otherwise every selected order is sent again.
    pub changed_only: bool,
    /// Count and show, record nothing.
    pub dry_run: bool,
}

/// One order's differences, the first one found.
#[derive(Debug, Clone)]
pub struct Example {
    pub appointment_id: String,
    /// The last message sent → the message now (values: for the operator's screen only).
    pub diffs: Vec<FieldDiff>,
}

/// What a resend found and did.
#[derive(Debug, Clone, Default)]
pub struct ResendReport {
    /// The mapping-set version the orders were compared with.
    pub mapping_version: String,
    /// Orders looked at.
    pub tracked: usize,
    /// Whose message now differs from the last one sent.
    pub changed: usize,
    /// Whose message is the same (MSH-7 and MSH-10 aside).
    pub unchanged: usize,
    /// Without a stored message to compare with (tracked before messages were kept, or a
    /// baseline that did not map): sent only when every order is asked for.
    pub unknown: usize,
    /// That the current mappings cannot render (each is logged without values).
    pub unmappable: usize,
    /// Events recorded (0 on a dry run).
    pub resent: usize,
    pub example: Option<Example>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error(
        "domain `{domain}` has no tracked order `{appointment_id}` (the feed knows the orders it has seen pending)"
    )]
    NotTracked {
        domain: String,
        appointment_id: String,
    },
    #[error("the mapping set is not loaded; nothing can be re-mapped until a reload succeeds")]
    NotLoaded,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Feed {
    /// Re-maps a domain's tracked orders (or one) and records a `changed` event for each
    /// to send (see the module doc). Holds the domain's watch lock unless it is a dry run.
    pub async fn resend(
        &self,
        mappings: &MappingSet,
        request: &ResendRequest,
    ) -> Result<ResendReport, ResendError> {
        let _watch = if request.dry_run {
            None
        } else {
            Some(self.lock_watch(&request.domain).await)
        };
        self.resend_locked(mappings, request).await
    }

    /// [`Feed::resend`] for a caller that holds the domain's watch lock (the watcher).
    pub(crate) async fn resend_locked(
        &self,
        mappings: &MappingSet,
        request: &ResendRequest,
    ) -> Result<ResendReport, ResendError> {
        let domain = request.domain.as_str();
        let tracked = self
            .tracked(domain, request.appointment_id.as_deref())
            .await?;
        if let Some(id) = &request.appointment_id
            && tracked.is_empty()
        {
            return Err(ResendError::NotTracked {
                domain: domain.to_string(),
                appointment_id: id.clone(),
            });
        }
        let mut report = ResendReport {
            mapping_version: mappings.version().to_string(),
            tracked: tracked.len(),
            ..Default::default()
        };
        let mut events = Vec::new();
        for order in tracked {
            match self.compare(mappings, domain, order, request.changed_only, &mut report) {
                Some(event) if !request.dry_run => {
                    events.push(event);
                    if events.len() == BATCH {
                        report.resent += events.len();
                        self.record(domain, std::mem::take(&mut events), Vec::new(), Vec::new())
                            .await?;
                    }
                }
                _ => {}
            }
        }
        if !events.is_empty() {
            report.resent += events.len();
            self.record(domain, events, Vec::new(), Vec::new()).await?;
        }
        Ok(report)
    }

    /// Compares one order's message now with the last one sent, counts the outcome, and
    /// returns the event to record when it is to be sent.
    fn compare(
        &self,
        mappings: &MappingSet,
        domain: &str,
        order: Tracked,
        changed_only: bool,
        report: &mut ResendReport,
    ) -> Option<NewEvent> {
        let unmappable = |report: &mut ResendReport, e: &dyn std::fmt::Display| {
            report.unmappable += 1;
            tracing::warn!(
                domain,
                appointment_id = %order.appointment_id,
                error = %e,
                "tracked order does not map with the current mapping set; not resent"
            );
        };
        let mut document: Value = match serde_json::from_slice(&order.document) {
            Ok(d) => d,
            Err(e) => {
                unmappable(report, &e);
                return None;
            }
        };
        // The message now, rendered as the last one was, so that only the mapping differs.
        let now = match &order.message {
            Some((kind, last)) => match render(mappings, &self.mapping, &mut document, *kind) {
                Ok(r) => {
                    let diffs = diff::hl7(last, &r.message);
                    Some((*kind, r, diffs))
                }
                Err(e) => {
                    unmappable(report, &e);
                    return None;
                }
            },
            None => None,
        };
        let changed = match &now {
            Some((_, _, diffs)) if diffs.is_empty() => {
                report.unchanged += 1;
                false
            }
            Some((_, _, diffs)) => {
                report.changed += 1;
                if report.example.is_none() {
                    report.example = Some(Example {
                        appointment_id: order.appointment_id.clone(),
                        diffs: diffs.clone(),
                    });
                }
                true
            }
            None => {
                report.unknown += 1;
                false
            }
        };
        if changed_only && !changed {
            return None;
        }
        // What consumers already have is replaced: an XO (kind `changed`).
        let rendered = match now {
            Some((EventKind::Changed, r, _)) => r,
            _ => match render(mappings, &self.mapping, &mut document, EventKind::Changed) {
                Ok(r) => r,
                Err(e) => {
                    unmappable(report, &e);
                    return None;
                }
            },
        };
        Some(NewEvent {
            fingerprint: mappings.order_fingerprint(&document),
            appointment_id: order.appointment_id,
            patient_id: order.patient_id,
            kind: EventKind::Changed,
            document: document.to_string().into_bytes(),
            message: rendered.message,
            control_id: rendered.control_id,
            mapping_version: rendered.version,
        })
    }

    /// Called by the domain's poll leader, holding its watch lock, before each poll: when
    /// the mapping-set version differs from the one the domain's orders were last compared
    /// with, resends the orders whose message changed, then notes the version.
    pub(crate) async fn reconcile_mappings(
        &self,
        mappings: &MappingSet,
        domain: &str,
    ) -> Result<Option<ResendReport>, ResendError> {
        if self.on_mapping_change() == super::OnMappingChange::Ignore {
            return Ok(None);
        }
        let version = mappings.version();
        if self.store.reconciled_version(domain).await?.as_deref() == Some(version) {
            return Ok(None);
        }
        let report = self
            .resend_locked(
                mappings,
                &ResendRequest {
                    domain: domain.to_string(),
                    appointment_id: None,
                    changed_only: true,
                    dry_run: false,
                },
            )
            .await?;
        self.store.set_reconciled_version(domain, version).await?;
        Ok(Some(report))
    }
}
