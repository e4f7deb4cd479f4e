//! `qubs-bridge feed status|retry|resend|watch`: the order feed of a running bridge, over its
//! gRPC `FeedService`.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use super::connect::{Connection, describe};
use super::output::{self, Column, Format, Progress, Table, note, or_dash, to_seconds};
use crate::grpc::pb::{self, OutputFormat, feed_service_client::FeedServiceClient};
use crate::mapping::golden::diff::FieldDiff;

#[derive(Subcommand)]
pub enum FeedCommand {
    /// Each destination's queue depth, last ACK and last error; each domain's watch.
    Status {
        /// `text` (two tables) or `json` (one object).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Put a destination's dead letters back in its queue (sent again as they were).
    Retry {
        /// The destination's name (see `feed status`).
        #[arg(long)]
        destination: String,
        /// One QUBS domain (default: every domain the token may use).
        #[arg(long, default_value = "")]
        domain: String,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Send a domain's tracked orders again as XO, re-mapped with the current mapping set
    /// (after a mapping change, or for a consumer that lost them).
    Resend {
        #[arg(long)]
        domain: String,
        /// Only this tracked order (default: every order the domain's watch knows).
        #[arg(long)]
        appointment: Option<String>,
        /// Only orders whose ORM now differs from the last one sent (MSH-7/MSH-10 aside).
        #[arg(long)]
        changed_by_mapping: bool,
        /// Count what would be sent and show one order's field differences; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Follow a domain's feed events (new, changed, removed orders) as they are found.
    Watch {
        #[arg(long)]
        domain: String,
        /// Resume after this cursor (`0`: every retained event; default: from now on).
        #[arg(long, default_value = "")]
        after: String,
        /// Print each event's ORM^O01 (patient data on the terminal).
        #[arg(long)]
        print: bool,
        /// Stop after this many events (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// `text` (a row per event) or `json` (one object per event and line).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

const EVENT_COLUMNS: [Column; 5] = [
    Column::right("CURSOR").width(8),
    Column::left("KIND").width(8),
    Column::left("DOMAIN").width(10),
    Column::left("APPOINTMENT").width(14),
    Column::left("DETECTED"),
];

pub async fn run(conn: &Connection, command: FeedCommand) -> anyhow::Result<()> {
    let mut client = FeedServiceClient::new(conn.channel().await?);
    let mut out = output::stdout();
    match command {
        FeedCommand::Status { format } => {
            let s = client
                .get_feed_status(pb::GetFeedStatusRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            match format {
                Format::Json => output::json_line(&mut out, &status_json(&s))?,
                Format::Text => print_status(&mut out, &s)?,
            }
        }
        FeedCommand::Retry {
            destination,
            domain,
            format,
        } => {
            let progress = Progress::spinner(format!("requeueing dead letters of {destination}"));
            let answer = client
                .retry_feed_deliveries(pb::RetryFeedDeliveriesRequest {
                    destination: destination.clone(),
                    domain,
                })
                .await
                .map_err(describe);
            progress.finish();
            let answer = answer?.into_inner();
            match format {
                Format::Json => output::json_line(
                    &mut out,
                    &json!({"destination": destination, "requeued": answer.requeued}),
                )?,
                Format::Text => writeln!(
                    out,
                    "{} dead letter(s) back in the queue of {destination}",
                    answer.requeued
                )?,
            }
        }
        FeedCommand::Resend {
            domain,
            appointment,
            changed_by_mapping,
            dry_run,
            format,
        } => {
            let progress = Progress::spinner(format!("re-mapping the tracked orders of {domain}"));
            let answer = client
                .resend_feed_orders(pb::ResendFeedOrdersRequest {
                    domain: domain.clone(),
                    appointment_id: appointment.unwrap_or_default(),
                    changed_only: changed_by_mapping,
                    dry_run,
                })
                .await
                .map_err(describe);
            progress.finish();
            let answer = answer?.into_inner();
            match format {
                Format::Json => output::json_line(
                    &mut out,
                    &resend_json(&domain, changed_by_mapping, dry_run, &answer),
                )?,
                Format::Text => {
                    print_resend(&mut out, &domain, changed_by_mapping, dry_run, &answer)?
                }
            }
        }
        FeedCommand::Watch {
            domain,
            after,
            print,
            count,
            format,
        } => {
            let mut stream = client
                .watch_orders(pb::WatchOrdersRequest {
                    domain,
                    formats: vec![OutputFormat::Hl7OrmO01 as i32],
                    after_cursor: after,
                })
                .await
                .map_err(describe)?
                .into_inner();
            if format == Format::Text {
                Table::stream_header(&EVENT_COLUMNS, &mut out)?;
            }
            let mut seen = 0u64;
            while let Some(event) = stream.message().await.map_err(describe)? {
                seen += 1;
                let kind = pb::FeedEventKind::try_from(event.kind)
                    .map(|k| {
                        k.as_str_name()
                            .trim_start_matches("FEED_EVENT_KIND_")
                            .to_lowercase()
                    })
                    .unwrap_or_else(|_| "?".into());
                let order = event.order.unwrap_or_default();
                let orm = order
                    .outputs
                    .first()
                    .map(|o| o.content.as_str())
                    .unwrap_or_default();
                match format {
                    Format::Json => output::json_line(
                        &mut out,
                        &json!({"cursor": event.cursor, "kind": kind, "domain": order.domain,
                               "appointmentId": order.appointment_id,
                               "detectedAt": event.detected_at_utc,
                               "orm": if print { orm } else { "" }}),
                    )?,
                    Format::Text => {
                        Table::stream_row(
                            &EVENT_COLUMNS,
                            [
                                event.cursor.as_str(),
                                &kind,
                                &order.domain,
                                &order.appointment_id,
                                &event.detected_at_utc,
                            ],
                            &mut out,
                        )?;
                        if print {
                            for s in orm.split(['\r', '\n']).filter(|s| !s.is_empty()) {
                                writeln!(out, "    {s}")?;
                            }
                        }
                    }
                }
                if count > 0 && seen >= count {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// How many orders a resend sends (or, dry, would send).
fn to_send(r: &pb::ResendFeedOrdersResponse, changed_only: bool, dry_run: bool) -> u64 {
    match (dry_run, changed_only) {
        (false, _) => r.resent,
        (true, true) => r.changed,
        (true, false) => r.tracked - r.unmappable,
    }
}

/// One field difference as the golden runner writes it (`OBR-24: MR → NMR`).
fn change(c: &pb::FieldChange) -> FieldDiff {
    FieldDiff {
        path: c.field.clone(),
        expected: (!c.before_absent).then(|| c.before.clone()),
        actual: (!c.after_absent).then(|| c.after.clone()),
    }
}

fn resend_json(
    domain: &str,
    changed_only: bool,
    dry_run: bool,
    r: &pb::ResendFeedOrdersResponse,
) -> serde_json::Value {
    let example = (!r.example_appointment_id.is_empty()).then(|| {
        json!({
            "appointmentId": r.example_appointment_id,
            "changes": r.example_changes.iter().map(|c| json!({
                "field": c.field,
                "before": (!c.before_absent).then_some(&c.before),
                "after": (!c.after_absent).then_some(&c.after),
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "domain": domain, "dryRun": dry_run, "changedOnly": changed_only,
        "mappingSetVersion": r.mapping_set_version, "tracked": r.tracked,
        "changed": r.changed, "unchanged": r.unchanged, "unknown": r.unknown,
        "unmappable": r.unmappable, "resent": r.resent,
        "wouldResend": if dry_run { Some(to_send(r, changed_only, true)) } else { None },
        "example": example,
    })
}

fn print_resend(
    out: &mut impl Write,
    domain: &str,
    changed_only: bool,
    dry_run: bool,
    r: &pb::ResendFeedOrdersResponse,
) -> std::io::Result<()> {
    let mut compared = format!(
        "{} tracked order(s) of {domain} against mapping set {}: {} changed, {} unchanged",
        r.tracked, r.mapping_set_version, r.changed, r.unchanged
    );
    if r.unknown > 0 {
        compared.push_str(&format!(", {} without a message to compare", r.unknown));
    }
    if r.unmappable > 0 {
        compared.push_str(&format!(
            ", {} that do not map (see the bridge's log)",
            r.unmappable
        ));
    }
    writeln!(out, "{compared}")?;
    let n = to_send(r, changed_only, dry_run);
    if dry_run {
        writeln!(
            out,
            "dry run: {n} order(s) would be sent again as XO; nothing was sent"
        )?;
    } else {
        writeln!(out, "{n} order(s) queued to be sent again as XO")?;
    }
    if !r.example_appointment_id.is_empty() {
        writeln!(out, "\n{} (last sent → now):", r.example_appointment_id)?;
        for c in &r.example_changes {
            writeln!(out, "  {}", change(c))?;
        }
    }
    Ok(())
}

fn status_json(s: &pb::GetFeedStatusResponse) -> serde_json::Value {
    json!({
        "enabled": s.enabled,
        "destinations": s.destinations.iter().map(|d| json!({
            "name": d.name, "kind": d.kind, "target": d.target, "pending": d.pending,
            "delivered": d.delivered, "dead": d.dead,
            "oldestPendingSeconds": d.oldest_pending_seconds,
            "lastAckCode": d.last_ack_code, "lastAckAt": d.last_ack_at_utc,
            "lastError": d.last_error, "lastErrorAt": d.last_error_at_utc,
        })).collect::<Vec<_>>(),
        "watches": s.watches.iter().map(|w| json!({
            "domain": w.domain, "baselined": w.baselined, "polls": w.polls,
            "lastPollAt": w.last_poll_at_utc, "lastError": w.last_error,
            "trackedOrders": w.tracked_orders,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(out: &mut impl Write, s: &pb::GetFeedStatusResponse) -> std::io::Result<()> {
    if !s.enabled {
        note!("the order feed is not enabled on this bridge (feed.enabled = false)");
        return Ok(());
    }
    if s.destinations.is_empty() {
        note!("no destinations: events go to WatchOrders streams only");
    } else {
        let mut destinations = Table::new(&[
            Column::left("DESTINATION"),
            Column::left("KIND"),
            Column::left("TARGET"),
            Column::right("PENDING"),
            Column::right("DELIVERED"),
            Column::right("DEAD"),
            Column::right("OLDEST"),
            Column::left("LAST ACK"),
            Column::left("LAST ERROR"),
        ]);
        for d in &s.destinations {
            let ack = if d.last_ack_code.is_empty() {
                "-".to_string()
            } else {
                format!("{} {}", d.last_ack_code, to_seconds(&d.last_ack_at_utc))
            };
            let error = if d.last_error.is_empty() {
                "-".to_string()
            } else {
                format!("{} ({})", d.last_error, to_seconds(&d.last_error_at_utc))
            };
            destinations.row([
                d.name.clone(),
                d.kind.clone(),
                d.target.clone(),
                d.pending.to_string(),
                d.delivered.to_string(),
                d.dead.to_string(),
                format!("{:.0}s", d.oldest_pending_seconds),
                ack,
                error,
            ]);
        }
        destinations.print(out)?;
        writeln!(out)?;
    }
    let mut watches = Table::new(&[
        Column::left("DOMAIN"),
        Column::left("BASELINED"),
        Column::right("POLLS"),
        Column::right("TRACKED"),
        Column::left("LAST POLL"),
        Column::left("LAST ERROR"),
    ]);
    for w in &s.watches {
        watches.row([
            w.domain.clone(),
            if w.baselined { "yes" } else { "no" }.to_string(),
            w.polls.to_string(),
            w.tracked_orders.to_string(),
            to_seconds(&w.last_poll_at_utc).to_string(),
            or_dash(&w.last_error).to_string(),
        ]);
    }
    watches.print(out)
}
