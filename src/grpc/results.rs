//! `ResultService`: results from interface engines into QUBS reports.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Context;
use super::pb::{self, result_service_server::ResultService};
use crate::domain::{ReportStatus, ReportSubmission};
use crate::qubs::MAX_REPORT_TEXT_BYTES;
use crate::results::{Accepted, Refusal};

pub struct ResultsApi {
    ctx: Arc<Context>,
}

impl ResultsApi {
    pub fn new(ctx: Arc<Context>) -> ResultsApi {
        ResultsApi { ctx }
    }
}

fn outcome(a: &Accepted) -> pb::ReportOutcome {
    let receipt = a.receipt.as_ref();
    pb::ReportOutcome {
        appointment_id: a.appointment_id.clone(),
        report_guid: receipt.map(|r| r.report_guid.clone()).unwrap_or_default(),
        report_status: receipt
            .and_then(|r| r.report_status.clone())
            .unwrap_or_default(),
        reported_at_utc: receipt
            .and_then(|r| r.reported_at_utc.clone())
            .unwrap_or_default(),
        state: a.state.as_str().into(),
        outbox_id: a.outbox_id,
    }
}

fn detail(r: &Refusal) -> pb::ErrorDetail {
    pb::ErrorDetail {
        code: r.kind.to_string(),
        message: r.error.text.clone(),
        location: r
            .error
            .location
            .as_ref()
            .map(|l| format!("{}^{}^{}", l.segment, l.sequence, l.field))
            .unwrap_or_default(),
        qubs_request_id: r.qubs_request_id.clone().unwrap_or_default(),
    }
}

/// A refused FHIR or plain report as a gRPC status.
fn refused(r: &Refusal) -> Status {
    let text = r.error.text.clone();
    match r.kind {
        "unparseable" | "mapping" | "unmapped_value" | "attachment" | "rejected" => {
            Status::invalid_argument(text)
        }
        "not_found" | "not_pending" => Status::not_found(text),
        "preliminary_after_final" => Status::failed_precondition(text),
        _ => Status::unavailable(text),
    }
}

impl Context {
    /// The request's domain, or the only one this bridge serves.
    fn domain_or_default(&self, domain: &str) -> Result<String, Status> {
        if !domain.is_empty() {
            return Ok(domain.to_string());
        }
        match self.domains.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(Status::invalid_argument(
                "domain is required (this bridge serves several)",
            )),
        }
    }
}

#[tonic::async_trait]
impl ResultService for ResultsApi {
    async fn submit_oru(
        &self,
        request: Request<pb::SubmitOruRequest>,
    ) -> Result<Response<pb::SubmitOruResponse>, Status> {
        self.ctx
            .call("SubmitOru", request, |who, req| async move {
                let domain = self.ctx.domain_or_default(&req.domain)?;
                who.authorize(&domain)?;
                if req.message.is_empty() {
                    return Err(Status::invalid_argument("message is empty"));
                }
                let results = &self.ctx.results;
                let out = results.submit_oru(&domain, &req.message).await;
                let application = match &out.application_ack_for {
                    Some(ids) => {
                        let wait = results.settings.ack_wait();
                        results.application_ack(&out.header, ids, wait).await
                    }
                    None => None,
                };
                // The application ACK, when there is one, tells what became of the reports.
                let last = application.as_ref().unwrap_or(&out.ack);
                Ok(Response::new(pb::SubmitOruResponse {
                    ack: out.ack.text.clone().into_bytes(),
                    ack_code: out.ack.code.as_str().into(),
                    reports: last.accepted.iter().map(outcome).collect(),
                    error: last.refusal.as_ref().map(detail),
                    application_ack: application.map(|a| a.text.into_bytes()).unwrap_or_default(),
                }))
            })
            .await
    }

    async fn submit_diagnostic_report(
        &self,
        request: Request<pb::SubmitDiagnosticReportRequest>,
    ) -> Result<Response<pb::SubmitDiagnosticReportResponse>, Status> {
        self.ctx
            .call("SubmitDiagnosticReport", request, |who, req| async move {
                who.authorize(&req.domain)?;
                let key = idempotency_key(&req.idempotency_key)?;
                let accepted = self
                    .ctx
                    .results
                    .submit_diagnostic_report(&req.domain, &req.diagnostic_report_json, key)
                    .await
                    .map_err(|r| refused(&r))?;
                Ok(Response::new(pb::SubmitDiagnosticReportResponse {
                    reports: accepted.iter().map(outcome).collect(),
                }))
            })
            .await
    }

    async fn submit_report(
        &self,
        request: Request<pb::SubmitReportRequest>,
    ) -> Result<Response<pb::SubmitReportResponse>, Status> {
        self.ctx
            .call("SubmitReport", request, |who, req| async move {
                who.authorize(&req.domain)?;
                let report = report_from(&req)?;
                let key = idempotency_key(&req.idempotency_key)?;
                let accepted = self
                    .ctx
                    .results
                    .submit_report(&req.domain, &report, key)
                    .await
                    .map_err(|r| refused(&r))?;
                Ok(Response::new(pb::SubmitReportResponse {
                    report: Some(outcome(&accepted)),
                }))
            })
            .await
    }
}

/// The caller's `Idempotency-Key`, if it gave one. Checked here, before anything is
/// stored: QUBS takes 1 to 128 printable ASCII characters, and a key it cannot take would
/// otherwise be found out only by the outbox worker, leaving a dead letter behind.
fn idempotency_key(key: &str) -> Result<Option<&str>, Status> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(
            "idempotency_key must be 1 to 128 printable ASCII characters",
        ));
    }
    Ok(Some(key))
}

fn report_from(req: &pb::SubmitReportRequest) -> Result<ReportSubmission, Status> {
    let opt = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
    if req.appointment_id.trim().is_empty() {
        return Err(Status::invalid_argument("appointment_id is required"));
    }
    if req.report_text.is_empty() {
        return Err(Status::invalid_argument("report_text is required"));
    }
    if req.report_text.len() > MAX_REPORT_TEXT_BYTES {
        return Err(Status::invalid_argument(format!(
            "report_text is {} bytes; QUBS accepts at most {MAX_REPORT_TEXT_BYTES}",
            req.report_text.len()
        )));
    }
    let status = match req.report_status.trim().to_ascii_lowercase().as_str() {
        "preliminary" => ReportStatus::Preliminary,
        "final" => ReportStatus::Final,
        _ => {
            return Err(Status::invalid_argument(
                "report_status must be `preliminary` or `final`",
            ));
        }
    };
    let reported_at_utc = match opt(&req.reported_at_utc) {
        None => None,
        Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|_| {
            Status::invalid_argument("reported_at_utc must be an RFC 3339 UTC timestamp")
        })?),
    };
    Ok(ReportSubmission {
        domain: Some(req.domain.clone()),
        appointment_id: req.appointment_id.trim().to_string(),
        report_text: req.report_text.clone(),
        report_status: status,
        report_format: opt(&req.report_format),
        interpreting_clinician_name: opt(&req.interpreting_clinician_name),
        interpreting_clinician_provider_number: opt(&req.interpreting_clinician_provider_number),
        interpreting_clinician_email: opt(&req.interpreting_clinician_email),
        reported_at_utc,
    })
}
