//! Re-sending changed orders to the feed's consumers after a promotion (operator role):
//! each watched domain's tracked orders re-mapped with the live set and compared with the
//! last message sent, through [`crate::feed::Feed::resend`] — what `qubs-bridge feed
//! resend --changed-by-mapping` and gRPC `ResendFeedOrders` call. A dry run counts and
//! shows one order's differences; a resend records an XO for each order whose message
//! changed (MSH-7 and MSH-10 aside) and is audited.
//!
//! With `feed.on_mapping_change = "resend_changed"` (the default) the domain's poll leader
//! does the same by itself at its next poll; asking here does it now. Both compare with the
//! last message sent, so an order is not sent twice for one change.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{record, storage};
use super::auth::Caller;
use super::{Console, error};
use crate::feed::OnMappingChange;
use crate::feed::resend::{ResendError, ResendReport, ResendRequest};
use crate::store::StoreError;

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ResendBody {
    /// One watched domain; every domain the user may use when absent.
    domain: Option<String>,
    /// Count and show one order's differences; send nothing.
    dry_run: bool,
}

/// One domain's outcome as the page shows it. The example's values are the order's data:
/// for the operator's screen (this answer), never the log or the audit.
fn domain_json(domain: &str, r: &ResendReport) -> Value {
    json!({
        "domain": domain,
        "tracked": r.tracked,
        "changed": r.changed,
        "unchanged": r.unchanged,
        "unknown": r.unknown,
        "unmappable": r.unmappable,
        "resent": r.resent,
        "example": r.example.as_ref().map(|e| json!({
            "appointmentId": e.appointment_id,
            "changes": e.diffs.iter().map(|d| json!({
                "field": d.path,
                "before": d.expected,
                "after": d.actual,
            })).collect::<Vec<_>>(),
        })),
    })
}

/// `POST /console/api/feed/resend {"domain"?, "dryRun"?}`: re-sends the orders whose feed
/// message changed under the live mapping set.
pub async fn resend(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<ResendBody>,
) -> Response {
    let Some(feed) = &console.feed else {
        return error(
            StatusCode::CONFLICT,
            "the order feed is not enabled on this bridge (feed.enabled = false): there are no consumers to re-send to",
        );
    };
    if !console.mappings.is_loaded() {
        return error(StatusCode::CONFLICT, &ResendError::NotLoaded.to_string());
    }
    let domains: Vec<String> = match body.domain.as_deref().map(str::trim) {
        Some(d) if !d.is_empty() => {
            if !console.feed_domains.iter().any(|w| w == d) || !caller.user.may_see(d) {
                return error(
                    StatusCode::FORBIDDEN,
                    &format!("domain `{d}` is not one of yours that the feed watches"),
                );
            }
            vec![d.to_string()]
        }
        _ => console
            .feed_domains
            .iter()
            .filter(|d| caller.user.may_see(d))
            .cloned()
            .collect(),
    };
    let set = console.mappings.current();
    let mut answers = Vec::new();
    let (mut resent, mut changed, mut tracked) = (0, 0, 0);
    let mut refused = Vec::new();
    for domain in &domains {
        let request = ResendRequest {
            domain: domain.clone(),
            appointment_id: None,
            changed_only: true,
            dry_run: body.dry_run,
        };
        match feed.resend(&set, &request).await {
            Ok(report) => {
                resent += report.resent;
                changed += report.changed;
                tracked += report.tracked;
                answers.push(domain_json(domain, &report));
            }
            Err(ResendError::Store(StoreError::NotLeader { scope, .. })) => {
                let why = format!(
                    "another replica polls domain `{scope}`: only its console can re-send its orders"
                );
                answers.push(json!({"domain": domain, "error": why}));
                refused.push(domain.clone());
            }
            Err(e @ (ResendError::NotLoaded | ResendError::NotTracked { .. })) => {
                return error(StatusCode::CONFLICT, &e.to_string());
            }
            Err(ResendError::Store(e)) => return storage(e),
        }
    }
    if !body.dry_run {
        let outcome = if refused.is_empty() {
            "ok".to_string()
        } else {
            format!(
                "not done for {}: another replica polls them",
                refused.join(", ")
            )
        };
        record(
            &console,
            &caller,
            "feed.resend",
            format!("domains {}", domains.join(",")),
            format!(
                "resent {resent}: {changed} of {tracked} tracked order(s) changed under mapping set {}",
                set.version()
            ),
            &outcome,
        )
        .await;
        tracing::info!(user = %caller.user.name, resent, changed, tracked, "console: changed feed orders resent");
    }
    Json(json!({
        "dryRun": body.dry_run,
        "mappingVersion": set.version(),
        "onMappingChange": match feed.on_mapping_change() {
            OnMappingChange::ResendChanged => "resend_changed",
            OnMappingChange::Ignore => "ignore",
        },
        "tracked": tracked,
        "changed": changed,
        "resent": resent,
        "domains": answers,
    }))
    .into_response()
}
