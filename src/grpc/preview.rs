//! `MappingService`: what an analyst's tool calls to try a mapping on one input.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Context;
use super::pb::{self, mapping_service_server::MappingService};
use crate::mapping::preview::preview;

pub struct Preview {
    ctx: Arc<Context>,
}

impl Preview {
    pub fn new(ctx: Arc<Context>) -> Preview {
        Preview { ctx }
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
                let run = preview(
                    &set,
                    &req.mapping,
                    &req.input,
                    &req.site_time_zone,
                    &self.ctx.config_values,
                    req.trace,
                )
                .map_err(|e| Status::not_found(e.to_string()))?;
                // Values included: the caller supplied the input.
                let (trace_json, trace_text) = match &run.trace {
                    Some(t) => (
                        serde_json::to_string(t).unwrap_or_default(),
                        t.render_text(),
                    ),
                    None => Default::default(),
                };
                Ok(Response::new(pb::PreviewMappingResponse {
                    mapping_set_version: run.version,
                    trace_json,
                    trace_text,
                    output: run.output,
                    warnings: run
                        .warnings
                        .into_iter()
                        .map(|w| pb::Warning {
                            code: w.code,
                            rule: w.rule,
                            message: w.message,
                        })
                        .collect(),
                    unread_fields: run.unread_fields,
                    errors: run
                        .errors
                        .into_iter()
                        .map(|e| pb::ErrorDetail {
                            code: e.code,
                            message: e.message,
                            location: String::new(),
                            qubs_request_id: String::new(),
                        })
                        .collect(),
                }))
            })
            .await
    }
}
