//! `qubs-bridge outbox list|show|retry|purge`: the durable outbox of a running bridge,
//! over its gRPC `OutboxService`.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use super::connect::{Connection, describe};
use super::exit::usage;
use super::output::{self, Column, Format, Progress, Table, note, or_dash, to_seconds};
use crate::grpc::pb::{self, outbox_service_client::OutboxServiceClient};

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// List entries (newest last) with their state, attempts and last error.
    List {
        /// `pending`, `submitted` or `dead`.
        #[arg(long)]
        state: Option<String>,
        /// One QUBS domain (default: every domain the token may use).
        #[arg(long, default_value = "")]
        domain: String,
        #[arg(long)]
        appointment: Option<String>,
        /// Entries after this id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// `text` (a table; the counts on stderr) or `json` (one object per entry and line).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one entry in full (no report content: ids, states and reasons).
    Show {
        id: i64,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Put dead letters back in the queue.
    Retry {
        /// Entry ids.
        ids: Vec<i64>,
        /// Every dead letter (of --domain, or of every domain the token may use).
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
        #[arg(long, default_value = "")]
        domain: String,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete submitted or dead entries older than a given age. Pending ones never.
    Purge {
        /// `submitted` or `dead`.
        #[arg(long)]
        state: String,
        /// Only entries last changed at least this long ago, e.g. `7d`, `12h`, `30m`, `0s`.
        #[arg(long, value_parser = parse_age)]
        older_than: u64,
        #[arg(long, default_value = "")]
        domain: String,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn parse_age(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not an age like 7d, 12h, 30m or 90s"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    Ok(n.saturating_mul(factor))
}

fn entry_json(e: &pb::OutboxEntry) -> serde_json::Value {
    json!({
        "id": e.id, "domain": e.domain, "appointmentId": e.appointment_id,
        "source": e.source, "sourceId": e.source_id, "group": e.group,
        "reportStatus": e.report_status, "state": e.state, "attempts": e.attempts,
        "receivedAt": e.received_at, "firstAttemptAt": e.first_attempt_at,
        "nextAttemptAt": e.next_attempt_at, "updatedAt": e.updated_at,
        "lastError": e.last_error, "errorKind": e.error_kind,
        "qubsRequestId": e.qubs_request_id, "reportGuid": e.report_guid,
        "qubsReportStatus": e.qubs_report_status, "attachments": e.attachments,
        "idempotencyKey": e.idempotency_key,
    })
}

const COLUMNS: [Column; 8] = [
    Column::right("ID"),
    Column::left("STATE"),
    Column::left("DOMAIN"),
    Column::left("APPOINTMENT"),
    Column::left("STATUS"),
    Column::right("TRIES"),
    Column::left("RECEIVED"),
    Column::left("LAST ERROR"),
];

pub async fn run(conn: &Connection, command: OutboxCommand) -> anyhow::Result<()> {
    let mut client = OutboxServiceClient::new(conn.channel().await?);
    let mut out = output::stdout();
    match command {
        OutboxCommand::List {
            state,
            domain,
            appointment,
            after,
            limit,
            format,
        } => {
            let answer = client
                .list_outbox(pb::ListOutboxRequest {
                    state: state.unwrap_or_default(),
                    domain,
                    appointment_id: appointment.unwrap_or_default(),
                    after_id: after,
                    limit,
                })
                .await
                .map_err(describe)?
                .into_inner();
            match format {
                Format::Json => {
                    for e in &answer.entries {
                        output::json_line(&mut out, &entry_json(e))?;
                    }
                }
                Format::Text => {
                    let mut table = Table::new(&COLUMNS);
                    for e in &answer.entries {
                        table.row([
                            e.id.to_string(),
                            e.state.clone(),
                            e.domain.clone(),
                            e.appointment_id.clone(),
                            or_dash(&e.report_status).to_string(),
                            e.attempts.to_string(),
                            to_seconds(&e.received_at).to_string(),
                            or_dash(&e.last_error).to_string(),
                        ]);
                    }
                    table.print(&mut out)?;
                }
            }
            note!(
                "outbox: {} pending (oldest {:.0} s), {} submitted, {} dead",
                answer.pending,
                answer.oldest_pending_seconds,
                answer.submitted,
                answer.dead
            );
        }
        OutboxCommand::Show { id, format } => {
            let e = client
                .get_outbox_entry(pb::GetOutboxEntryRequest { id })
                .await
                .map_err(describe)?
                .into_inner();
            match format {
                Format::Json => output::json_line(&mut out, &entry_json(&e))?,
                Format::Text => {
                    let mut fields = Table::fields();
                    if let serde_json::Value::Object(values) = entry_json(&e) {
                        for (k, v) in values {
                            let v = match v {
                                serde_json::Value::String(s) => s,
                                other => other.to_string(),
                            };
                            if !v.is_empty() {
                                fields.row([k, v]);
                            }
                        }
                    }
                    fields.print(&mut out)?;
                }
            }
        }
        OutboxCommand::Retry {
            ids,
            all_dead,
            domain,
            format,
        } => {
            if !all_dead && ids.is_empty() {
                return Err(usage("give entry ids, or --all-dead"));
            }
            let progress = Progress::spinner("putting dead letters back in the queue");
            let answer = client
                .retry_outbox(pb::RetryOutboxRequest {
                    ids,
                    all_dead,
                    domain,
                })
                .await
                .map_err(describe);
            progress.finish();
            let answer = answer?.into_inner();
            match format {
                Format::Json => output::json_line(&mut out, &json!({"requeued": answer.requeued}))?,
                Format::Text => {
                    writeln!(out, "{} dead letter(s) back in the queue", answer.requeued)?
                }
            }
        }
        OutboxCommand::Purge {
            state,
            older_than,
            domain,
            format,
        } => {
            let progress = Progress::spinner(format!("purging {state} entries"));
            let answer = client
                .purge_outbox(pb::PurgeOutboxRequest {
                    state,
                    older_than_secs: older_than,
                    domain,
                })
                .await
                .map_err(describe);
            progress.finish();
            let answer = answer?.into_inner();
            match format {
                Format::Json => output::json_line(&mut out, &json!({"purged": answer.purged}))?,
                Format::Text => writeln!(out, "{} entr(y/ies) purged", answer.purged)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_with_units() {
        assert_eq!(super::parse_age("90"), Ok(90));
        assert_eq!(super::parse_age("30m"), Ok(1800));
        assert_eq!(super::parse_age("7d"), Ok(604_800));
        assert!(super::parse_age("7w").is_err());
        assert!(super::parse_age("x").is_err());
    }
}
