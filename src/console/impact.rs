//! Impact preview (analyst role): before promoting, run the live mapping and the draft over
//! the orders the feed tracks (the worklist as last polled) and count how many outputs
//! change, grouped by the set of fields that change, with one example per group.
//!
//! Both runs use the same message time and control id, so the fields that differ on every
//! run (MSH-7, MSH-10) never count as a change. HL7 outputs are compared field by field
//! (`ORC-7`, `OBR[2]-4` for a repeated segment), FHIR outputs leaf by leaf
//! (`code.coding[0].code`).

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
use crate::mapping::{Body, InputKind, MapOptions, MappingSet};

/// Orders replayed at most.
const MAX_ORDERS: usize = 2000;
/// The MSH-7 both runs use.
const FIXED_NOW: &str = "2026-01-01T00:00:00+00:00[UTC]";
const FIXED_CONTROL_ID: &str = "IMPACTPREVIEW";

/// An output's fields by name.
fn fields(body: &Body) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match body {
        Body::Hl7(er7) => {
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for segment in er7.split(['\r', '\n']).filter(|s| s.len() >= 3) {
                let name = &segment[..3];
                let n = seen.entry(name).or_default();
                *n += 1;
                let label = if *n == 1 {
                    name.to_string()
                } else {
                    format!("{name}[{n}]")
                };
                // MSH-1 is the separator itself: MSH fields are numbered from it.
                let offset = usize::from(name == "MSH");
                for (i, value) in segment.split('|').enumerate().skip(1) {
                    out.insert(format!("{label}-{}", i + offset), value.to_string());
                }
            }
        }
        Body::Fhir(v) => flatten(v, String::new(), &mut out),
    }
    out
}

fn flatten(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(x, format!("{path}[{i}]"), out);
            }
        }
        Value::String(s) => {
            out.insert(path, s.clone());
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

/// The fields that differ between two outputs: `(field, before, after)`. A field one
/// output lacks is empty (ER7 drops trailing empty fields).
fn changes(before: &Body, after: &Body) -> Vec<(String, String, String)> {
    let (a, b) = (fields(before), fields(after));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let x = a.get(k).map_or("", String::as_str);
            let y = b.get(k).map_or("", String::as_str);
            (x != y).then(|| (k.clone(), x.to_string(), y.to_string()))
        })
        .collect()
}

/// One group of outputs that changed in the same fields.
struct Kind {
    count: usize,
    appointments: Vec<String>,
    example: Vec<(String, String, String)>,
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
                let key: Vec<String> = c.iter().map(|x| x.0.clone()).collect();
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
            "example": k.example.into_iter().map(|(field, before, after)| json!({
                "field": field, "before": before, "after": after,
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

    #[test]
    fn hl7_fields_are_named_by_segment_occurrence_and_msh_counts_from_the_separator() {
        let f = fields(&Body::Hl7("MSH|^~\\&|APP\rOBR|1|A\rOBR|2|B\r".to_string()));
        assert_eq!(f["MSH-2"], "^~\\&");
        assert_eq!(f["MSH-3"], "APP");
        assert_eq!(f["OBR-2"], "A");
        assert_eq!(f["OBR[2]-2"], "B");
        let c = changes(
            &Body::Hl7("MSH|^~\\&|APP\rORC|NW||x".into()),
            &Body::Hl7("MSH|^~\\&|APP\rORC|NW||y".into()),
        );
        assert_eq!(c, vec![("ORC-3".into(), "x".into(), "y".into())]);
    }

    #[test]
    fn fhir_leaves_are_named_by_path() {
        let c = changes(
            &Body::Fhir(json!({"code": {"coding": [{"code": "A"}]}, "status": "active"})),
            &Body::Fhir(json!({"code": {"coding": [{"code": "B"}]}, "status": "active"})),
        );
        assert_eq!(
            c,
            vec![("code.coding[0].code".into(), "A".into(), "B".into())]
        );
    }
}
