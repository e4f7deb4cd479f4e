//! `qubs-bridge orders list|get|stream`: read orders from a running bridge over gRPC.

use std::io::Write;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use serde_json::{Value, json};

use super::connect::{Connection, describe};
use super::output::{self, Column, Format, Progress, Table, note, or_dash};
use crate::grpc::pb::{self, OutputFormat, order_service_client::OrderServiceClient};

#[derive(Subcommand)]
pub enum OrdersCommand {
    /// One page of orders pending reporting.
    List(ListArgs),
    /// One order with its comments, alerts and attachments.
    Get(GetArgs),
    /// Every order pending reporting, streamed across all pages.
    Stream(StreamArgs),
}

/// Output documents to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum As {
    /// FHIR R4 ServiceRequest (JSON).
    FhirServiceRequest,
    /// FHIR R4 DiagnosticReport (JSON).
    FhirDiagnosticReport,
    /// HL7 v2 ORM^O01 (ER7).
    Hl7Orm,
    /// The QUBS source JSON.
    SourceJson,
}

impl From<As> for OutputFormat {
    fn from(a: As) -> Self {
        match a {
            As::FhirServiceRequest => OutputFormat::FhirServiceRequest,
            As::FhirDiagnosticReport => OutputFormat::FhirDiagnosticReport,
            As::Hl7Orm => OutputFormat::Hl7OrmO01,
            As::SourceJson => OutputFormat::SourceJson,
        }
    }
}

#[derive(Args)]
pub struct Common {
    /// QUBS domain.
    #[arg(long, env = "QUBS_BRIDGE_DOMAIN", default_value = "acme")]
    domain: String,
    /// Documents wanted per order (repeatable).
    #[arg(long = "as", value_enum, default_values_t = [As::SourceJson])]
    outputs: Vec<As>,
    /// `text` (a table; `get`: the order and its documents) or `json` (one object per order
    /// and line).
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    common: Common,
    /// Orders per page (0 = the server's default).
    #[arg(long, default_value_t = 0)]
    page_size: u32,
    /// The `next page token` printed by the previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    /// Fetch comments and alerts too.
    #[arg(long)]
    comments: bool,
    #[command(flatten)]
    filter: Filters,
}

/// `--filter FIELD=VALUE`: only the orders whose field has that value.
#[derive(Args)]
pub struct Filters {
    /// Only orders whose FIELD is VALUE: FIELD is appointment, status, modality, priority or
    /// scheduled; VALUE compares ignoring case, `*` matches any text
    /// (`--filter priority=semi-urgent`, `--filter scheduled=2026-11-20*`). Repeat it: every
    /// filter must hold.
    #[arg(long = "filter", value_name = "FIELD=VALUE", value_parser = parse_filter)]
    filters: Vec<(Field, String)>,
}

/// A field `--filter` can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Appointment,
    Status,
    Modality,
    Priority,
    Scheduled,
}

fn parse_filter(s: &str) -> Result<(Field, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: write FIELD=VALUE, e.g. priority=semi-urgent"))?;
    let field = match k.trim().to_lowercase().as_str() {
        "appointment" | "appointmentid" | "id" => Field::Appointment,
        "status" => Field::Status,
        "modality" => Field::Modality,
        "priority" => Field::Priority,
        "scheduled" => Field::Scheduled,
        other => {
            return Err(format!(
                "`{other}` is not a field to filter on (appointment, status, modality, priority, scheduled)"
            ));
        }
    };
    Ok((field, v.trim().to_lowercase()))
}

impl Filters {
    /// Whether `order` passes every filter.
    fn keep(&self, order: &pb::Order) -> bool {
        self.filters.iter().all(|(field, want)| {
            let have = match field {
                Field::Appointment => &order.appointment_id,
                Field::Status => &order.status,
                Field::Modality => &order.modality,
                Field::Priority => &order.priority,
                Field::Scheduled => &order.scheduled_local,
            };
            crate::mapping::golden::wildcard(want, &have.trim().to_lowercase())
        })
    }

    fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    common: Common,
    /// QUBS appointment id.
    appointment_id: String,
}

#[derive(Args)]
pub struct StreamArgs {
    #[command(flatten)]
    common: Common,
    /// QUBS page size while streaming (0 = the server's default).
    #[arg(long, default_value_t = 0)]
    page_size: u32,
    /// Fetch comments and alerts too.
    #[arg(long)]
    comments: bool,
    /// Stop after this many orders.
    #[arg(long)]
    limit: Option<usize>,
    /// Print only the total (on stderr), not the orders.
    #[arg(long)]
    count_only: bool,
    #[command(flatten)]
    filter: Filters,
}

/// The columns of an order list: one row per order.
const COLUMNS: [Column; 8] = [
    Column::left("APPOINTMENT").width(14),
    Column::left("STATUS").width(20),
    Column::left("MODALITY").width(8),
    Column::left("PRIORITY").width(10),
    Column::left("SCHEDULED").width(16),
    Column::right("WARNINGS"),
    Column::right("COMMENTS"),
    Column::left("OUTPUTS"),
];

pub async fn run(conn: &Connection, command: OrdersCommand) -> anyhow::Result<()> {
    let mut client = OrderServiceClient::new(conn.channel().await?);
    let formats = |c: &Common| -> Vec<i32> {
        c.outputs
            .iter()
            .map(|a| OutputFormat::from(*a) as i32)
            .collect()
    };
    let mut out = output::stdout();
    match command {
        OrdersCommand::List(args) => {
            let page = client
                .list_pending_orders(pb::ListPendingOrdersRequest {
                    domain: args.common.domain.clone(),
                    page_size: args.page_size,
                    page_token: args.page_token.clone(),
                    formats: formats(&args.common),
                    include_comments: args.comments,
                })
                .await
                .map_err(describe)?
                .into_inner();
            for s in &page.skipped {
                output::warning(format_args!(
                    "skipped QUBS item {} ({}): {}",
                    s.index, s.id, s.reason
                ));
            }
            let shown: Vec<&pb::Order> =
                page.orders.iter().filter(|o| args.filter.keep(o)).collect();
            match args.common.format {
                Format::Text => {
                    let mut table = Table::new(&COLUMNS);
                    for order in &shown {
                        table.row(row(order));
                    }
                    table.print(&mut out)?;
                }
                Format::Json => {
                    for order in &shown {
                        output::json_line(&mut out, &order_json(order))?;
                    }
                }
            }
            // The page's end goes to stderr: stdout holds only orders.
            let count = if args.filter.is_empty() {
                format!("{} orders", page.orders.len())
            } else {
                format!(
                    "{} of {} orders match the filter",
                    shown.len(),
                    page.orders.len()
                )
            };
            if page.next_page_token.is_empty() {
                note!("{count}; last page");
            } else {
                note!("{count}; next page: --page-token {}", page.next_page_token);
            }
        }
        OrdersCommand::Get(args) => {
            let order = client
                .get_order(pb::GetOrderRequest {
                    domain: args.common.domain.clone(),
                    appointment_id: args.appointment_id.clone(),
                    formats: formats(&args.common),
                })
                .await
                .map_err(describe)?
                .into_inner()
                .order
                .ok_or_else(|| anyhow::anyhow!("the bridge answered without an order"))?;
            match args.common.format {
                Format::Json => output::json_line(&mut out, &order_json(&order))?,
                Format::Text => print_order(&mut out, &order)?,
            }
        }
        OrdersCommand::Stream(args) => {
            let mut stream = client
                .stream_pending_orders(pb::StreamPendingOrdersRequest {
                    domain: args.common.domain.clone(),
                    formats: formats(&args.common),
                    page_size: args.page_size,
                    include_comments: args.comments,
                })
                .await
                .map_err(describe)?
                .into_inner();
            let started = Instant::now();
            let progress = Progress::counter("orders");
            let mut count = 0usize;
            if args.common.format == Format::Text && !args.count_only {
                Table::stream_header(&COLUMNS, &mut out)?;
            }
            while let Some(item) = stream.next().await {
                let item = item.map_err(describe)?;
                if let Some(s) = item.skipped {
                    output::warning(format_args!(
                        "skipped QUBS item {} ({}): {}",
                        s.index, s.id, s.reason
                    ));
                }
                let Some(order) = item.order else { continue };
                progress.inc();
                if !args.filter.keep(&order) {
                    continue;
                }
                count += 1;
                if !args.count_only {
                    match args.common.format {
                        Format::Text => Table::stream_row(&COLUMNS, row(&order), &mut out)?,
                        Format::Json => output::json_line(&mut out, &order_json(&order))?,
                    }
                }
                if args.limit.is_some_and(|l| count >= l) {
                    break;
                }
            }
            progress.finish();
            let secs = started.elapsed().as_secs_f64();
            note!(
                "{count} orders in {secs:.1} s ({:.0}/s)",
                count as f64 / secs.max(1e-3)
            );
        }
    }
    Ok(())
}

fn row(order: &pb::Order) -> [String; 8] {
    let outputs: Vec<String> = order
        .outputs
        .iter()
        .map(|o| format!("{} ({} B)", format_name(o.format), o.content.len()))
        .collect();
    [
        order.appointment_id.clone(),
        order.status.clone(),
        or_dash(&order.modality).to_string(),
        or_dash(&order.priority).to_string(),
        // `2026-11-20 09:15`: minutes are enough to read a worklist by.
        or_dash(
            &order
                .scheduled_local
                .replacen('T', " ", 1)
                .chars()
                .take(16)
                .collect::<String>(),
        )
        .to_string(),
        order.warnings.len().to_string(),
        order.comments.len().to_string(),
        outputs.join(", "),
    ]
}

/// One order for people: its fields, comments and attachments, then each document.
fn print_order(out: &mut impl Write, order: &pb::Order) -> std::io::Result<()> {
    let mut fields = Table::fields();
    fields
        .row(["appointment", &order.appointment_id])
        .row(["domain", &order.domain])
        .row(["status", &order.status])
        .row(["modality", or_dash(&order.modality)])
        .row(["priority", or_dash(&order.priority)])
        .row(["scheduled", or_dash(&order.scheduled_local)])
        .row(["mappings", or_dash(&order.mapping_set_version)]);
    for w in &order.warnings {
        fields.row(["warning", &format!("{} {} {}", w.code, w.rule, w.message)]);
    }
    fields.row(["comments", &order.comments.len().to_string()]);
    fields.row(["attachments", &order.attachments.len().to_string()]);
    fields.print(out)?;
    if !order.comments.is_empty() {
        writeln!(out)?;
        let mut comments = Table::new(&[
            Column::left("COMMENT"),
            Column::left("TYPE"),
            Column::left("TEXT"),
        ]);
        for c in &order.comments {
            let kind = if c.is_alert { "ALERT" } else { "note" };
            // One line per comment: its line breaks would split the row.
            comments.row([kind, &c.comment_type, &c.text.replace(['\r', '\n'], " ")]);
        }
        comments.print(out)?;
    }
    if !order.attachments.is_empty() {
        writeln!(out)?;
        let mut attachments = Table::new(&[
            Column::left("ATTACHMENT"),
            Column::left("CATEGORY"),
            Column::left("FILE"),
        ]);
        for a in &order.attachments {
            attachments.row([&a.guid, &a.category, &a.file_name]);
        }
        attachments.print(out)?;
    }
    for o in &order.outputs {
        writeln!(out, "\n--- {} ({})", format_name(o.format), o.content_type)?;
        writeln!(out, "{}", readable(&o.content))?;
    }
    Ok(())
}

fn order_json(order: &pb::Order) -> Value {
    let outputs: Vec<Value> = order
        .outputs
        .iter()
        .map(|o| {
            let content = serde_json::from_str::<Value>(&o.content)
                .unwrap_or_else(|_| Value::String(o.content.clone()));
            json!({"format": format_name(o.format), "contentType": o.content_type, "content": content})
        })
        .collect();
    let warnings: Vec<Value> = order
        .warnings
        .iter()
        .map(|w| json!({"code": w.code, "rule": w.rule, "message": w.message}))
        .collect();
    json!({
        "domain": order.domain,
        "appointmentId": order.appointment_id,
        "status": order.status,
        "modality": order.modality,
        "priority": order.priority,
        "scheduledLocal": order.scheduled_local,
        "mappingSetVersion": order.mapping_set_version,
        "warnings": warnings,
        "comments": order.comments.iter().map(|c| json!({"guid": c.guid, "commentType": c.comment_type, "text": c.text, "isAlert": c.is_alert})).collect::<Vec<_>>(),
        "attachments": order.attachments.iter().map(|a| json!({"guid": a.guid, "category": a.category, "fileName": a.file_name, "url": a.url, "urlExpiresAtUtc": a.url_expires_at_utc})).collect::<Vec<_>>(),
        "outputs": outputs,
    })
}

fn format_name(format: i32) -> &'static str {
    match OutputFormat::try_from(format) {
        Ok(OutputFormat::FhirServiceRequest) => "fhir-service-request",
        Ok(OutputFormat::FhirDiagnosticReport) => "fhir-diagnostic-report",
        Ok(OutputFormat::Hl7OrmO01) => "hl7-orm",
        Ok(OutputFormat::SourceJson) => "source-json",
        _ => "unknown",
    }
}

/// JSON pretty-printed, ER7 with one segment per line.
fn readable(content: &str) -> String {
    match serde_json::from_str::<Value>(content) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| content.to_string()),
        Err(_) => output::segments_per_line(content),
    }
}
