//! `qubs-bridge oru submit FILE...` and `qubs-bridge report submit`: send results to a
//! running bridge over gRPC.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::connect::{Connection, Display, describe};
use crate::grpc::pb::{self, result_service_client::ResultServiceClient};

#[derive(Subcommand)]
pub enum OruCommand {
    /// Submit ORU^R01 files (ER7); prints each ACK code and report.
    Submit {
        /// QUBS domain (default: the bridge's only one).
        #[arg(long, env = "QUBS_BRIDGE_DOMAIN", default_value = "")]
        domain: String,
        /// Output style.
        #[arg(long, value_enum, default_value_t = Display::Table)]
        format: Display,
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
    #[arg(long, value_enum, default_value_t = Display::Table)]
    format: Display,
}

pub async fn oru(conn: &Connection, command: OruCommand) -> anyhow::Result<()> {
    let OruCommand::Submit {
        domain,
        format,
        show_ack,
        files,
    } = command;
    let mut client = ResultServiceClient::new(conn.channel().await?);
    let mut refused = 0;
    for file in &files {
        let message = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let answer = client
            .submit_oru(pb::SubmitOruRequest {
                message,
                domain: domain.clone(),
            })
            .await
            .map_err(|s| describe(&s))?
            .into_inner();
        if answer.ack_code != "AA" && answer.ack_code != "CA" {
            refused += 1;
        }
        match format {
            Display::Table => {
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
                print!("{:<3} {}", answer.ack_code, file.display());
                if !reports.is_empty() {
                    print!("  {}", reports.join("; "));
                }
                if let Some(e) = &answer.error {
                    print!("  [{}] {}", e.code, e.message);
                }
                println!();
                if show_ack {
                    for ack in [&answer.ack, &answer.application_ack] {
                        if !ack.is_empty() {
                            println!("{}", String::from_utf8_lossy(ack).replace('\r', "\n"));
                        }
                    }
                }
            }
            Display::Json => println!(
                "{}",
                json!({
                    "file": file.display().to_string(),
                    "ackCode": answer.ack_code,
                    "ack": String::from_utf8_lossy(&answer.ack),
                    "reports": answer.reports.iter().map(|r| json!({"appointmentId": r.appointment_id, "reportGuid": r.report_guid, "reportStatus": r.report_status, "state": r.state, "outboxId": r.outbox_id})).collect::<Vec<_>>(),
                    "error": answer.error.as_ref().map(|e| json!({"code": e.code, "message": e.message, "location": e.location})),
                })
            ),
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
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(&args.text_file)
            .with_context(|| format!("reading {}", args.text_file.display()))?;
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
        .map_err(|s| describe(&s))?
        .into_inner();
    let r = answer.report.unwrap_or_default();
    match args.format {
        Display::Table if r.state == "pending" => println!(
            "report for appointment {} stored in the bridge's outbox (entry {}); QUBS has not confirmed it yet",
            r.appointment_id, r.outbox_id
        ),
        Display::Table => println!(
            "report {} for appointment {} stored as {} at {}",
            r.report_guid, r.appointment_id, r.report_status, r.reported_at_utc
        ),
        Display::Json => println!(
            "{}",
            json!({"appointmentId": r.appointment_id, "reportGuid": r.report_guid, "reportStatus": r.report_status, "reportedAtUtc": r.reported_at_utc, "state": r.state, "outboxId": r.outbox_id})
        ),
    }
    Ok(())
}
