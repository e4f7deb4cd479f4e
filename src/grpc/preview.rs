//! `MappingService`: what an analyst's tool calls to try a mapping on one input.

use std::sync::Arc;

use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use super::Context;
use super::pb::{self, mapping_service_server::MappingService};
use crate::mapping::{Body, InboundContext, InputKind, MapOptions, Trace, Unmapped};

pub struct Preview {
    ctx: Arc<Context>,
}

impl Preview {
    pub fn new(ctx: Arc<Context>) -> Preview {
        Preview { ctx }
    }
}

fn warnings(unmapped: &[Unmapped]) -> Vec<pb::Warning> {
    unmapped
        .iter()
        .map(|u| pb::Warning {
            code: "unmapped_value".into(),
            rule: format!("table {}", u.table),
            message: format!(
                "`{}` is not in code table `{}` (seen {}x)",
                u.value, u.table, u.count
            ),
        })
        .collect()
}

/// The trace in the response (values included: the caller supplied the input).
fn set_trace(response: &mut pb::PreviewMappingResponse, trace: &Trace) {
    response.trace_json = serde_json::to_string(trace).unwrap_or_default();
    response.trace_text = trace.render_text();
}

fn error(code: &str, message: String) -> pb::ErrorDetail {
    pb::ErrorDetail {
        code: code.into(),
        message,
        location: String::new(),
        qubs_request_id: String::new(),
    }
}

#[tonic::async_trait]
impl MappingService for Preview {
    async fn preview_mapping(
        &self,
        request: Request<pb::PreviewMappingRequest>,
    ) -> Result<Response<pb::PreviewMappingResponse>, Status> {
        self.ctx
            .call("PreviewMapping", request, |_who, req| async move {
                let set = self.ctx.mappings.current();
                let mut response = pb::PreviewMappingResponse {
                    mapping_set_version: set.version().to_string(),
                    ..Default::default()
                };
                let Some(kind) = set.get(&req.mapping).map(|m| m.input) else {
                    let names: Vec<&str> = set.names().collect();
                    return Err(Status::not_found(format!(
                        "no mapping `{}`; the set has: {}",
                        req.mapping,
                        names.join(", ")
                    )));
                };
                let site = if req.site_time_zone.is_empty() {
                    Value::Null
                } else {
                    json!({"siteName": "", "timeZone": req.site_time_zone})
                };
                let config = Value::Object(self.ctx.config_values.clone());
                match kind {
                    InputKind::Order => {
                        let mut order: Value = match serde_json::from_str(&req.input) {
                            Ok(v) => v,
                            Err(e) => {
                                response.errors.push(error(
                                    "unparseable",
                                    format!("input is not JSON: {}", crate::domain::json_error(&e)),
                                ));
                                return Ok(Response::new(response));
                            }
                        };
                        if let Some(o) = order.as_object_mut() {
                            if !site.is_null() && o.get("site").is_none_or(Value::is_null) {
                                o.insert("site".into(), site);
                            }
                            o.entry("config").or_insert(config);
                        }
                        if req.trace {
                            let (_, trace) =
                                set.map_order_traced(&req.mapping, &order, &MapOptions::default());
                            set_trace(&mut response, &trace);
                        }
                        match set.dry_run(&req.mapping, &order, &MapOptions::default()) {
                            Ok(run) => {
                                response.output = match run.output.body {
                                    Body::Fhir(v) => v.to_pretty(),
                                    Body::Hl7(s) => s,
                                };
                                response.warnings = warnings(&run.output.unmapped);
                                response.unread_fields = run.unread_fields;
                            }
                            Err(e) => response.errors.push(error("mapping", e.to_string())),
                        }
                    }
                    InputKind::Oru | InputKind::DiagnosticReport => {
                        let ctx = InboundContext {
                            domain: None,
                            site,
                            config,
                        };
                        let compiled = set.get(&req.mapping);
                        let mut unread = Vec::new();
                        let mapped = if kind == InputKind::Oru {
                            if let Some(m) = compiled {
                                unread = crate::mapping::unread::oru(m, &req.input);
                            }
                            if req.trace {
                                let (r, trace) = set.map_oru_traced(&req.mapping, &req.input, &ctx);
                                set_trace(&mut response, &trace);
                                r
                            } else {
                                set.map_oru_with(&req.mapping, &req.input, &ctx)
                            }
                        } else {
                            match serde_json::from_str::<Value>(&req.input) {
                                Ok(v) => {
                                    if let Some(m) = compiled {
                                        unread = crate::mapping::unread::diagnostic_report(m, &v);
                                    }
                                    if req.trace {
                                        let (r, trace) = set.map_diagnostic_report_traced(&v, &ctx);
                                        set_trace(&mut response, &trace);
                                        r
                                    } else {
                                        set.map_diagnostic_report(&v, &ctx)
                                    }
                                }
                                Err(e) => {
                                    response.errors.push(error(
                                        "unparseable",
                                        format!(
                                            "input is not JSON: {}",
                                            crate::domain::json_error(&e)
                                        ),
                                    ));
                                    return Ok(Response::new(response));
                                }
                            }
                        };
                        match mapped {
                            Ok(inbound) => {
                                response.output =
                                    serde_json::to_string_pretty(&inbound.submissions)
                                        .unwrap_or_default();
                                response.warnings = warnings(&inbound.unmapped);
                                response.unread_fields = unread;
                                response
                                    .warnings
                                    .extend(inbound.warnings.into_iter().map(|w| pb::Warning {
                                        code: "hl7_tolerated".into(),
                                        rule: String::new(),
                                        message: w,
                                    }));
                            }
                            Err(e) => response.errors.push(error("mapping", e.to_string())),
                        }
                    }
                }
                Ok(Response::new(response))
            })
            .await
    }
}
