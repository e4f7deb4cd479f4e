//! Impact preview (analyst role): before promoting, run the live mapping and the draft over
//! the orders the feed tracks (the worklist as last polled) and count how many outputs
//! change, grouped by the set of fields that change, with one example per group.
//!
//! Outputs are compared by the golden runner's field-level diff
//! ([`crate::mapping::golden::diff`]): HL7 field by field down to the component (`ORC-7.6`,
//! `OBR[2]-4` for a repeated segment), FHIR by JSON path (`code.coding[0].code`); the
//! fields that differ on every run (MSH-7, MSH-10) never count as a change.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::playground::{Draft, set_for};
use super::{Console, error};
use crate::mapping::golden::diff::{self, FieldDiff};
use crate::mapping::{Body, InputKind, MapOptions, MappingSet};

/// Orders replayed at most.
const MAX_ORDERS: usize = 2000;
/// The MSH-7 both runs use.
const FIXED_NOW: &str = "2026-01-01T00:00:00+00:00[UTC]";
const FIXED_CONTROL_ID: &str = "IMPACTPREVIEW";

/// The fields that differ between two outputs, by the golden runner's field-level diff
/// (HL7 down to the component, FHIR by JSON path; MSH-7, MSH-10 and `meta.lastUpdated`
/// are never a change).
fn changes(before: &Body, after: &Body) -> Vec<FieldDiff> {
    match (before, after) {
        (Body::Hl7(a), Body::Hl7(b)) => diff::hl7(a, b),
        (Body::Fhir(a), Body::Fhir(b)) => diff::json(&a.to_value(), &b.to_value()),
        (a, b) => diff::json(&body_json(a), &body_json(b)),
    }
}

fn body_json(body: &Body) -> Value {
    match body {
        Body::Hl7(s) => Value::String(s.clone()),
        Body::Fhir(v) => v.to_value(),
    }
}

/// One group of outputs that changed in the same fields.
struct Kind {
    count: usize,
    appointments: Vec<String>,
    example: Vec<FieldDiff>,
}

fn replay(
    live: &MappingSet,
    draft: &MappingSet,
    mapping: &str,
    orders: &[(String, String, Vec<u8>)],
) -> Value {
    let options = MapOptions {
        now: FIXED_NOW.parse().ok(),
        control_id: Some(FIXED_CONTROL_ID.into()),
        ..MapOptions::default()
    };
    let mut kinds: BTreeMap<Vec<String>, Kind> = BTreeMap::new();
    let (mut unchanged, mut failed) = (0usize, Vec::new());
    for (domain, id, document) in orders {
        let Ok(order) = serde_json::from_slice::<Value>(document) else {
            failed.push(json!({"appointmentId": id, "domain": domain, "error": "stored document is not JSON"}));
            continue;
        };
        let before = live.map_order_with(mapping, &order, &options);
        let after = draft.map_order_with(mapping, &order, &options);
        match (before, after) {
            (Ok(b), Ok(a)) => {
                let c = changes(&b.body, &a.body);
                if c.is_empty() {
                    unchanged += 1;
                    continue;
                }
                let key: Vec<String> = c.iter().map(|x| x.path.clone()).collect();
                let kind = kinds.entry(key).or_insert_with(|| Kind {
                    count: 0,
                    appointments: Vec::new(),
                    example: c.clone(),
                });
                kind.count += 1;
                if kind.appointments.len() < 20 {
                    kind.appointments.push(format!("{domain}/{id}"));
                }
            }
            (b, a) => failed.push(json!({
                "appointmentId": id,
                "domain": domain,
                "live": b.err().map(|e| e.to_string()),
                "draft": a.err().map(|e| e.to_string()),
            })),
        }
    }
    let mut kinds: Vec<(Vec<String>, Kind)> = kinds.into_iter().collect();
    kinds.sort_by_key(|(_, k)| std::cmp::Reverse(k.count));
    let changed: usize = kinds.iter().map(|(_, k)| k.count).sum();
    json!({
        "examined": orders.len(),
        "changed": changed,
        "unchanged": unchanged,
        "failed": failed,
        "kinds": kinds.into_iter().map(|(fields, k)| json!({
            "fields": fields,
            "count": k.count,
            "appointments": k.appointments,
            // `null`: the field is absent on that side.
            "example": k.example.into_iter().map(|d| json!({
                "field": d.path, "before": d.expected, "after": d.actual,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImpactRequest {
    /// An order mapping (input `order`).
    mapping: String,
    draft: Draft,
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /console/api/impact {"mapping", "draft", "limit"?}`: the live mapping against the
/// draft over the feed's tracked orders.
pub async fn impact(
    State(console): State<Arc<Console>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<ImpactRequest>,
) -> Response {
    let Some(feed) = &console.feed else {
        return error(
            StatusCode::CONFLICT,
            "the impact preview replays the orders the feed tracks, and the order feed is off (feed.enabled = false)",
        );
    };
    let live = console.mappings.current();
    match live.get(&req.mapping).map(|m| m.input) {
        Some(InputKind::Order) => {}
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "`{}` is not an order mapping: the impact preview replays orders",
                    req.mapping
                ),
            );
        }
        None => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no mapping `{}`", req.mapping),
            );
        }
    }
    let draft = match set_for(&console, Some(&req.draft)) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let limit = req.limit.unwrap_or(500).clamp(1, MAX_ORDERS);
    let mut orders = Vec::new();
    for domain in caller.user.domains(&console.feed_domains) {
        match feed
            .tracked_documents(&domain, limit - orders.len().min(limit))
            .await
        {
            Ok(docs) => orders.extend(docs.into_iter().map(|(id, d)| (domain.clone(), id, d))),
            Err(e) => return super::api::storage(e),
        }
        if orders.len() >= limit {
            break;
        }
    }
    let mapping = req.mapping;
    let answer =
        tokio::task::spawn_blocking(move || replay(&live, &draft, &mapping, &orders)).await;
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the impact preview failed",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::FhirJson;

    #[test]
    fn hl7_changes_are_named_down_to_the_component_and_msh_time_and_id_never_count() {
        let c = changes(
            &Body::Hl7("MSH|^~\\&|APP||||20260101||ORM^O01|X1\rORC|NW||^^^^^R".into()),
            &Body::Hl7("MSH|^~\\&|APP||||20260102||ORM^O01|X2\rORC|NW||^^^^^S".into()),
        );
        let named: Vec<_> = c.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(named, ["ORC-3.6"]);
        assert_eq!(
            (c[0].expected.as_deref(), c[0].actual.as_deref()),
            (Some("R"), Some("S"))
        );
    }

    #[test]
    fn fhir_leaves_are_named_by_path() {
        let c = changes(
            &Body::Fhir(FhirJson(
                json!({"code": {"coding": [{"code": "A"}]}, "status": "active"}).to_string(),
            )),
            &Body::Fhir(FhirJson(
                json!({"code": {"coding": [{"code": "B"}]}, "status": "active"}).to_string(),
            )),
        );
        let named: Vec<_> = c.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(named, ["code.coding[0].code"]);
    }
}
