//! `qubs-bridge feed status|watch`: the order feed of a running bridge, over its gRPC
//! `FeedService`.

use clap::Subcommand;
use serde_json::json;

use super::connect::{Connection, Display, describe};
use crate::grpc::pb::{self, OutputFormat, feed_service_client::FeedServiceClient};

#[derive(Subcommand)]
pub enum FeedCommand {
    /// Each destination's queue depth, last ACK and last error; each domain's watch.
    Status {
        #[arg(long, value_enum, default_value_t = Display::Table)]
        format: Display,
    },
    /// Put a destination's dead letters back in its queue (sent again as they were).
    Retry {
        /// The destination's name (see `feed status`).
        #[arg(long)]
        destination: String,
        /// One QUBS domain (default: every domain the token may use).
        #[arg(long, default_value = "")]
        domain: String,
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
        #[arg(long, value_enum, default_value_t = Display::Table)]
        format: Display,
    },
}

pub async fn run(conn: &Connection, command: FeedCommand) -> anyhow::Result<()> {
    let mut client = FeedServiceClient::new(conn.channel().await?);
    match command {
        FeedCommand::Status { format } => {
            let s = client
                .get_feed_status(pb::GetFeedStatusRequest {})
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            match format {
                Display::Json => println!("{}", status_json(&s)),
                Display::Table => print_status(&s),
            }
        }
        FeedCommand::Retry {
            destination,
            domain,
        } => {
            let answer = client
                .retry_feed_deliveries(pb::RetryFeedDeliveriesRequest {
                    destination: destination.clone(),
                    domain,
                })
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            println!(
                "{} dead letter(s) back in the queue of {destination}",
                answer.requeued
            );
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
                .map_err(|s| describe(&s))?
                .into_inner();
            let mut seen = 0u64;
            while let Some(event) = stream.message().await.map_err(|s| describe(&s))? {
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
                    Display::Json => println!(
                        "{}",
                        json!({"cursor": event.cursor, "kind": kind, "domain": order.domain,
                               "appointmentId": order.appointment_id,
                               "detectedAt": event.detected_at_utc,
                               "orm": if print { orm } else { "" }})
                    ),
                    Display::Table => {
                        println!(
                            "{:>8}  {:<8} {:<10} {:<16} {}",
                            event.cursor,
                            kind,
                            order.domain,
                            order.appointment_id,
                            event.detected_at_utc
                        );
                        if print {
                            for s in orm.split(['\r', '\n']).filter(|s| !s.is_empty()) {
                                println!("    {s}");
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

fn print_status(s: &pb::GetFeedStatusResponse) {
    if !s.enabled {
        println!("the order feed is not enabled on this bridge (feed.enabled = false)");
        return;
    }
    println!(
        "{:<14} {:<5} {:<24} {:>7} {:>9} {:>5} {:>8}  {:<24}  last error",
        "destination", "kind", "target", "pending", "delivered", "dead", "oldest", "last ACK"
    );
    for d in &s.destinations {
        let ack = if d.last_ack_code.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{} {}",
                d.last_ack_code,
                d.last_ack_at_utc.get(..19).unwrap_or(&d.last_ack_at_utc)
            )
        };
        let error = if d.last_error.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{} ({})",
                d.last_error,
                d.last_error_at_utc
                    .get(..19)
                    .unwrap_or(&d.last_error_at_utc)
            )
        };
        println!(
            "{:<14} {:<5} {:<24} {:>7} {:>9} {:>5} {:>7.0}s  {:<24}  {}",
            d.name,
            d.kind,
            d.target,
            d.pending,
            d.delivered,
            d.dead,
            d.oldest_pending_seconds,
            ack,
            error
        );
    }
    if s.destinations.is_empty() {
        println!("(no destinations: events go to WatchOrders streams only)");
    }
    println!();
    println!(
        "{:<12} {:>9} {:>6} {:>8}  {:<20}  last error",
        "domain", "baselined", "polls", "tracked", "last poll"
    );
    for w in &s.watches {
        println!(
            "{:<12} {:>9} {:>6} {:>8}  {:<20}  {}",
            w.domain,
            if w.baselined { "yes" } else { "no" },
            w.polls,
            w.tracked_orders,
            w.last_poll_at_utc.get(..19).unwrap_or(&w.last_poll_at_utc),
            if w.last_error.is_empty() {
                "-"
            } else {
                &w.last_error
            }
        );
    }
}
