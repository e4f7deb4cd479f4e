//! `qubs-bridge oru submit FILE...` and `qubs-bridge report submit`: send results to a
//! running bridge over gRPC.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::connect::{Connection, describe};
use super::exit::usage;
use super::output::{self, Format};
use crate::grpc::pb::{self, result_service_client::ResultServiceClient};

#[derive(Subcommand)]
pub enum OruCommand {
    /// Submit ORU^R01 files (ER7); prints each ACK code and report.
    Submit {
        /// QUBS domain (default: the bridge's only one).
        #[arg(long, env = "QUBS_BRIDGE_DOMAIN", default_value = "")]
        domain: String,
        /// `text` (a line per file) or `json` (one object per file and line).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Print the whole ACK message too.
        #[arg(long)]
        show_ack: bool,
        /// ER7 files, one message each.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Submit one report in QUBS's own terms.
    Submit(ReportArgs),
}

#[derive(Args)]
pub struct ReportArgs {
    #[arg(long, env = "QUBS_BRIDGE_DOMAIN", default_value = "acme")]
    domain: String,
    #[arg(long)]
    appointment: String,
    /// `preliminary` or `final`.
    #[arg(long)]
    status: String,
    /// File with the report text (`-` for standard input).
    #[arg(long)]
    text_file: PathBuf,
    #[arg(long)]
    clinician: Option<String>,
    #[arg(long)]
    provider_number: Option<String>,
    #[arg(long)]
    email: Option<String>,
    /// RFC 3339 UTC time of the report.
    #[arg(long)]
    reported_at: Option<String>,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub async fn oru(conn: &Connection, command: OruCommand) -> anyhow::Result<()> {
    let OruCommand::Submit {
        domain,
        format,
        show_ack,
        files,
    } = command;
    // Every file is read before anything is sent: a typo in the last name sends nothing.
    let messages = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| usage(format!("{}: {e}", f.display()))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = ResultServiceClient::new(conn.channel().await?);
    let mut out = output::stdout();
    let mut refused = 0;
    for (file, message) in files.iter().zip(messages) {
        let answer = client
            .submit_oru(pb::SubmitOruRequest {
                message,
                domain: domain.clone(),
            })
            .await
            .map_err(describe)?
            .into_inner();
        if answer.ack_code != "AA" && answer.ack_code != "CA" {
            refused += 1;
        }
        match format {
            Format::Text => {
                let reports: Vec<String> = answer
                    .reports
                    .iter()
                    .map(|r| {
                        if r.state == "pending" {
                            format!(
                                "{} -> stored, not confirmed yet (outbox {})",
                                r.appointment_id, r.outbox_id
                            )
                        } else {
                            format!(
                                "{} -> report {} ({})",
                                r.appointment_id, r.report_guid, r.report_status
                            )
                        }
                    })
                    .collect();
                let mut line = format!("{} {}", output::ack_code(&answer.ack_code), file.display());
                if !reports.is_empty() {
                    line.push_str(&format!("  {}", reports.join("; ")));
                }
                if let Some(e) = &answer.error {
                    line.push_str(&format!("  [{}] {}", e.code, e.message));
                }
                writeln!(out, "{line}")?;
                if show_ack {
                    for ack in [&answer.ack, &answer.application_ack] {
                        if !ack.is_empty() {
                            writeln!(
                                out,
                                "{}",
                                output::segments_per_line(&String::from_utf8_lossy(ack))
                            )?;
                        }
                    }
                }
            }
            Format::Json => output::json_line(
                &mut out,
                &json!({
                    "file": file.display().to_string(),
                    "ackCode": answer.ack_code,
                    "ack": String::from_utf8_lossy(&answer.ack),
                    "applicationAck": String::from_utf8_lossy(&answer.application_ack),
                    "reports": answer.reports.iter().map(|r| json!({"appointmentId": r.appointment_id, "reportGuid": r.report_guid, "reportStatus": r.report_status, "state": r.state, "outboxId": r.outbox_id})).collect::<Vec<_>>(),
                    "error": answer.error.as_ref().map(|e| json!({"code": e.code, "message": e.message, "location": e.location})),
                }),
            )?,
        }
    }
    anyhow::ensure!(
        refused == 0,
        "{refused} of {} message(s) not accepted",
        files.len()
    );
    Ok(())
}

pub async fn report(conn: &Connection, command: ReportCommand) -> anyhow::Result<()> {
    let ReportCommand::Submit(args) = command;
    let mut text = String::new();
    if args.text_file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("reading the report text from standard input: {e}")))?;
    } else {
        text = std::fs::read_to_string(&args.text_file)
            .map_err(|e| usage(format!("--text-file {}: {e}", args.text_file.display())))?;
    }
    let mut client = ResultServiceClient::new(conn.channel().await?);
    let answer = client
        .submit_report(pb::SubmitReportRequest {
            domain: args.domain,
            appointment_id: args.appointment,
            report_text: text,
            report_status: args.status,
            interpreting_clinician_name: args.clinician.unwrap_or_default(),
            interpreting_clinician_provider_number: args.provider_number.unwrap_or_default(),
            interpreting_clinician_email: args.email.unwrap_or_default(),
            reported_at_utc: args.reported_at.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(describe)?
        .into_inner();
    let r = answer.report.unwrap_or_default();
    let mut out = output::stdout();
    match args.format {
        Format::Text if r.state == "pending" => writeln!(
            out,
            "report for appointment {} stored in the bridge's outbox (entry {}); QUBS has not confirmed it yet",
            r.appointment_id, r.outbox_id
        )?,
        Format::Text => writeln!(
            out,
            "report {} for appointment {} stored as {} at {}",
            r.report_guid, r.appointment_id, r.report_status, r.reported_at_utc
        )?,
        Format::Json => output::json_line(
            &mut out,
            &json!({"appointmentId": r.appointment_id, "reportGuid": r.report_guid, "reportStatus": r.report_status, "reportedAtUtc": r.reported_at_utc, "state": r.state, "outboxId": r.outbox_id}),
        )?,
    }
    Ok(())
}
