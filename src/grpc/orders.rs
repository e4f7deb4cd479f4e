//! `OrderService`: orders pending reporting, read from QUBS and rendered in the formats the
//! caller asks for. `GetOrder` finds its appointment in the [`PendingList`](crate::pending_list::PendingList) (the pending
//! list as last read, read again when too old), or with the single-appointment GET where
//! `qubs.endpoints.appointment` says QUBS has one.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::pb::{self, OutputFormat, order_service_server::OrderService};
use super::{Context, status};
use crate::orders::{Include, Order};
use crate::pending_list::PendingListError;
use crate::qubs::{self, Disposition};

/// Orders sent ahead of the caller before the stream waits for it to read (flow control).
const STREAM_BUFFER: usize = 64;

/// Longest appointment id `GetOrder` takes: QUBS's are short (`A123456`), and an answer
/// naming a huge one would not fit a gRPC status.
const MAX_APPOINTMENT_ID_CHARS: usize = 256;

pub struct Orders {
    ctx: Arc<Context>,
}

impl Orders {
    pub fn new(ctx: Arc<Context>) -> Orders {
        Orders { ctx }
    }
}

/// The formats asked for; `default` when none.
pub(super) fn formats(
    requested: &[i32],
    default: OutputFormat,
) -> Result<Vec<OutputFormat>, Status> {
    if requested.is_empty() {
        return Ok(vec![default]);
    }
    requested
        .iter()
        .map(|f| match OutputFormat::try_from(*f) {
            Ok(OutputFormat::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
                "unknown output format {f}"
            ))),
            Ok(f) => Ok(f),
        })
        .collect()
}

fn page_size(requested: u32, default: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(default),
        1..=500 => Ok(requested),
        n => Err(Status::invalid_argument(format!(
            "page_size must be 1–500 (or 0 for the default), not {n}"
        ))),
    }
}

fn skipped(s: &qubs::SkippedItem) -> pb::SkippedItem {
    pb::SkippedItem {
        index: s.index as u32,
        id: s.id.clone().unwrap_or_default(),
        reason: s.reason.clone(),
    }
}

impl Context {
    /// The appointment `GetOrder` asks for, and whether QUBS listed it in its latest pass
    /// (`false`: it may have left the list since).
    async fn appointment(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<(qubs::Appointment, bool), Status> {
        match self.pending.appointment(domain, appointment_id).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(Status::not_found(format!(
                "appointment {appointment_id} is not in QUBS's pending reporting list for domain {domain}"
            ))),
            Err(PendingListError::Qubs(e)) => Err(status::from_qubs(&e)),
            Err(PendingListError::Store(e)) => {
                tracing::error!(error = %e, "pending list unavailable");
                Err(Status::unavailable(
                    "the bridge's store is unavailable; try again",
                ))
            }
        }
    }

    /// Fetches an order's companions and renders it.
    async fn order(
        &self,
        domain: &str,
        appointment: qubs::Appointment,
        include: Include,
        formats: &[OutputFormat],
    ) -> Result<pb::Order, Status> {
        let order = Order::assemble(&self.client, domain, appointment, include)
            .await
            .map_err(|e| status::from_qubs(&e))?;
        self.render(&order, formats)
    }
}

type OrderStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamPendingOrdersResponse, Status>> + Send>>;
type ChunkStream =
    Pin<Box<dyn Stream<Item = Result<pb::GetAttachmentContentResponse, Status>> + Send>>;

#[tonic::async_trait]
impl OrderService for Orders {
    async fn list_pending_orders(
        &self,
        request: Request<pb::ListPendingOrdersRequest>,
    ) -> Result<Response<pb::ListPendingOrdersResponse>, Status> {
        self.ctx
            .call("ListPendingOrders", request, |who, req| async move {
                who.authorize(&req.domain)?;
                let formats = formats(&req.formats, OutputFormat::FhirServiceRequest)?;
                let size = page_size(req.page_size, self.ctx.page_size)?;
                let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
                let page = self
                    .ctx
                    .client
                    .pending_page(&req.domain, token, Some(size))
                    .await
                    .map_err(|e| status::from_qubs(&e))?;
                let include = Include {
                    comments: req.include_comments,
                    attachments: false,
                };
                let orders: Vec<pb::Order> = futures::stream::iter(page.appointments)
                    .map(|a| self.ctx.order(&req.domain, a, include, &formats))
                    .buffered(self.ctx.fetch_concurrency)
                    .try_collect()
                    .await?;
                Ok(Response::new(pb::ListPendingOrdersResponse {
                    orders,
                    next_page_token: page.next_token.unwrap_or_default(),
                    skipped: page.skipped.iter().map(skipped).collect(),
                }))
            })
            .await
    }

    type StreamPendingOrdersStream = OrderStream;

    async fn stream_pending_orders(
        &self,
        request: Request<pb::StreamPendingOrdersRequest>,
    ) -> Result<Response<Self::StreamPendingOrdersStream>, Status> {
        self.ctx
            .call("StreamPendingOrders", request, |who, req| async move {
                who.authorize(&req.domain)?;
                let formats = formats(&req.formats, OutputFormat::FhirServiceRequest)?;
                let size = page_size(req.page_size, self.ctx.page_size)?;
                let include = Include {
                    comments: req.include_comments,
                    attachments: false,
                };
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                tokio::spawn(stream_orders(
                    self.ctx.clone(),
                    req.domain,
                    size,
                    include,
                    formats,
                    tx,
                ));
                let stream: OrderStream = Box::pin(ReceiverStream::new(rx));
                Ok(Response::new(stream))
            })
            .await
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        self.ctx
            .call("GetOrder", request, |who, req| async move {
                who.authorize(&req.domain)?;
                if req.appointment_id.is_empty() {
                    return Err(Status::invalid_argument("appointment_id is required"));
                }
                let length = req.appointment_id.chars().count();
                if length > MAX_APPOINTMENT_ID_CHARS {
                    return Err(Status::invalid_argument(format!(
                        "appointment_id is {length} characters long; at most {MAX_APPOINTMENT_ID_CHARS} are taken"
                    )));
                }
                let formats = formats(&req.formats, OutputFormat::FhirServiceRequest)?;
                let (appointment, listed) = self
                    .ctx
                    .appointment(&req.domain, &req.appointment_id)
                    .await?;
                let include = Include {
                    comments: true,
                    attachments: true,
                };
                let order = self
                    .ctx
                    .order(&req.domain, appointment, include, &formats)
                    .await
                    .map_err(|s| match s.code() {
                        // QUBS serves comments of pending reporting appointments only.
                        tonic::Code::NotFound if !listed => tonic::Status::with_metadata(
                            tonic::Code::NotFound,
                            format!(
                                "appointment {} is no longer in QUBS's pending reporting list: {}",
                                req.appointment_id,
                                s.message()
                            ),
                            s.metadata().clone(),
                        ),
                        _ => s,
                    })?;
                Ok(Response::new(pb::GetOrderResponse { order: Some(order) }))
            })
            .await
    }

    type GetAttachmentContentStream = ChunkStream;

    async fn get_attachment_content(
        &self,
        request: Request<pb::GetAttachmentContentRequest>,
    ) -> Result<Response<Self::GetAttachmentContentStream>, Status> {
        self.ctx
            .call("GetAttachmentContent", request, |who, req| async move {
                who.authorize(&req.domain)?;
                if req.appointment_id.is_empty() || req.attachment_guid.is_empty() {
                    return Err(Status::invalid_argument(
                        "appointment_id and attachment_guid are required",
                    ));
                }
                // Fresh metadata gives a fresh presigned URL.
                let attachment = self
                    .ctx
                    .client
                    .attachment(
                        &req.domain,
                        &req.appointment_id,
                        &req.attachment_guid,
                        Disposition::Attachment,
                    )
                    .await
                    .map_err(|e| status::from_qubs(&e))?;
                let download = self
                    .ctx
                    .client
                    .download_attachment(&attachment)
                    .await
                    .map_err(|e| status::from_qubs(&e))?;
                let mut first = Some(pb::GetAttachmentContentResponse {
                    data: Vec::new(),
                    content_type: download.content_type.clone().unwrap_or_default(),
                    total_size: download.content_length.unwrap_or(0),
                    file_name: attachment.file_name.clone().unwrap_or_default(),
                });
                let stream = download.chunks.map(move |chunk| {
                    let data = chunk.map_err(|e| status::from_qubs(&e))?.to_vec();
                    Ok(match first.take() {
                        Some(head) => pb::GetAttachmentContentResponse { data, ..head },
                        None => pb::GetAttachmentContentResponse {
                            data,
                            ..Default::default()
                        },
                    })
                });
                let stream: ChunkStream = Box::pin(stream);
                Ok(Response::new(stream))
            })
            .await
    }
}

/// Feeds a StreamPendingOrders call: the next QUBS page is fetched (by a second task) while
/// the current one is rendered and sent. Both stop as soon as the caller goes away.
async fn stream_orders(
    ctx: Arc<Context>,
    domain: String,
    page_size: u32,
    include: Include,
    formats: Vec<OutputFormat>,
    tx: mpsc::Sender<Result<pb::StreamPendingOrdersResponse, Status>>,
) {
    // One page ahead: memory stays bounded whatever the total.
    let (page_tx, mut page_rx) = mpsc::channel::<Result<qubs::PendingPage, Status>>(1);
    let client = ctx.client.clone();
    let fetch_domain = domain.clone();
    let fetcher = tokio::spawn(async move {
        let mut token: Option<String> = None;
        loop {
            let page = tokio::select! {
                p = client.pending_page(&fetch_domain, token.as_deref(), Some(page_size)) => p,
                _ = page_tx.closed() => return,
            };
            let next = match &page {
                Ok(p) => p.next_token.clone(),
                Err(_) => None,
            };
            if page_tx
                .send(page.map_err(|e| status::from_qubs(&e)))
                .await
                .is_err()
            {
                return;
            }
            match next {
                Some(t) => token = Some(t),
                None => return,
            }
        }
    });
    let mut sent = 0usize;
    'pages: loop {
        let page = tokio::select! {
            p = page_rx.recv() => p,
            _ = tx.closed() => break,
        };
        let Some(page) = page else { break };
        let page = match page {
            Ok(p) => p,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        for s in &page.skipped {
            let item = pb::StreamPendingOrdersResponse {
                order: None,
                skipped: Some(skipped(s)),
            };
            if tx.send(Ok(item)).await.is_err() {
                break 'pages;
            }
        }
        let mut orders = futures::stream::iter(page.appointments)
            .map(|a| ctx.order(&domain, a, include, &formats))
            .buffered(ctx.fetch_concurrency);
        loop {
            let next = tokio::select! {
                o = orders.next() => o,
                _ = tx.closed() => break 'pages,
            };
            let Some(order) = next else { break };
            let item = order.map(|o| pb::StreamPendingOrdersResponse {
                order: Some(o),
                skipped: None,
            });
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break 'pages;
            }
            sent += 1;
        }
    }
    drop(page_rx);
    let _ = fetcher.await;
    tracing::debug!(domain, sent, "order stream finished");
}
