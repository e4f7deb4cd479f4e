//! The gRPC API for interface engines (`proto/qubs_bridge/v1/bridge.proto`), served with
//! tonic: bearer-token or client-certificate auth on every call, `grpc.health.v1` (Check and
//! Watch), server reflection in both `grpc.reflection.v1` and `v1alpha` (so `grpcurl`,
//! Postman and grpcio-reflection clients work), gzip, message size limits and HTTP/2
//! keep-alive.
//!
//! The health and reflection services need no credentials, so load balancers and tools can
//! use them; every `qubs_bridge.v1` call is authenticated.

pub mod auth;
mod feed;
mod health;
mod orders;
mod outbox;
mod preview;
mod results;
pub mod settings;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Response, Status};

use crate::config::GrpcSettings;
use crate::live_mappings::LiveMappings;
use crate::mapping::Body;
use crate::metrics::Metrics;
use crate::orders::Order;
use crate::qubs;

/// Code generated from `proto/`.
pub mod pb {
    tonic::include_proto!("qubs_bridge.v1");

    /// Encoded descriptors of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("qubs_bridge_descriptor");
}

pub use health::Health;
use pb::OutputFormat;

/// What every gRPC handler needs.
pub struct Context {
    pub client: qubs::Client,
    pub metrics: Arc<Metrics>,
    pub mappings: Arc<LiveMappings>,
    pub results: Arc<crate::results::Results>,
    /// The pending list as last read, where `GetOrder` finds its appointment.
    pub pending: Arc<crate::pending_list::PendingList>,
    /// The order feed, when enabled (for `WatchOrders` and `feed status`).
    pub feed: Option<Arc<crate::feed::Feed>>,
    pub feed_destinations: Vec<crate::feed::DestinationSettings>,
    /// The QUBS domains this bridge serves.
    pub domains: Vec<String>,
    /// Values mapping files read as `config.*`.
    pub config_values: Map<String, Value>,
    pub page_size: u32,
    pub fetch_concurrency: usize,
}

impl Context {
    /// Renders an order in the requested formats with the current mapping set (one set for
    /// the whole order, even if a reload happens meanwhile).
    pub(crate) fn render(
        &self,
        order: &Order,
        formats: &[OutputFormat],
    ) -> Result<pb::Order, Status> {
        let document = order.to_json(&self.config_values);
        let mut rendered = self.render_document(
            &order.domain,
            order.appointment.id(),
            &document,
            formats,
            None,
        )?;
        rendered.comments = order.comments.iter().map(comment).collect();
        rendered.attachments = order.attachments.iter().map(attachment).collect();
        let field = |name: &str| {
            order
                .appointment
                .str_field(name)
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        rendered.status = order.appointment.status().unwrap_or_default().to_string();
        rendered.modality = field("modality");
        rendered.priority = field("priority");
        rendered.scheduled_local = match (field("appointmentDate"), field("startTime")) {
            (date, _) if date.is_empty() => String::new(),
            (date, time) if time.is_empty() => date,
            (date, time) => format!("{date}T{time}"),
        };
        Ok(rendered)
    }

    /// Renders an order document (as [`Order::to_json`] makes it). `orm`, when given, is the
    /// ORM^O01 already rendered for it (the feed's message, with its MSH-10), used as is.
    pub(crate) fn render_document(
        &self,
        domain: &str,
        appointment_id: &str,
        document: &Value,
        formats: &[OutputFormat],
        orm: Option<&str>,
    ) -> Result<pb::Order, Status> {
        let mappings = self.mappings.current();
        let mut outputs = Vec::with_capacity(formats.len());
        let mut warnings = Vec::new();
        for format in formats {
            let mapping = match format {
                OutputFormat::SourceJson => {
                    outputs.push(pb::Output {
                        format: *format as i32,
                        content_type: "application/json".into(),
                        content: document.to_string(),
                    });
                    continue;
                }
                OutputFormat::Hl7OrmO01 if orm.is_some() => {
                    outputs.push(pb::Output {
                        format: *format as i32,
                        content_type: "x-application/hl7-v2+er7".into(),
                        content: orm.unwrap_or_default().to_string(),
                    });
                    continue;
                }
                OutputFormat::FhirServiceRequest => "service_request",
                OutputFormat::FhirDiagnosticReport => "diagnostic_report",
                OutputFormat::Hl7OrmO01 => "orm_o01",
                OutputFormat::Unspecified => {
                    return Err(Status::invalid_argument("output format is unspecified"));
                }
            };
            let output = mappings.map_order(mapping, document).map_err(|e| {
                Status::failed_precondition(format!(
                    "appointment {appointment_id}: mapping `{mapping}` failed: {e}"
                ))
            })?;
            self.metrics.unmapped.record(
                mapping,
                &output.version,
                domain,
                appointment_id,
                &output.unmapped,
            );
            for u in &output.unmapped {
                warnings.push(pb::Warning {
                    code: "unmapped_value".into(),
                    rule: format!("{mapping}: table {}", u.table),
                    message: format!(
                        "`{}` is not in code table `{}` (seen {}x); the table's unmapped policy applied",
                        u.value, u.table, u.count
                    ),
                });
            }
            let (content_type, content) = match output.body {
                Body::Fhir(json) => ("application/fhir+json", json.to_string()),
                Body::Hl7(er7) => ("x-application/hl7-v2+er7", er7),
            };
            outputs.push(pb::Output {
                format: *format as i32,
                content_type: content_type.into(),
                content,
            });
        }
        Ok(pb::Order {
            domain: domain.to_string(),
            appointment_id: appointment_id.to_string(),
            outputs,
            warnings,
            mapping_set_version: mappings.version().to_string(),
            ..Default::default()
        })
    }

    /// Runs one call: the authenticated caller, the caller's deadline, metrics.
    pub(crate) async fn call<Req, Res, F, Fut>(
        &self,
        method: &'static str,
        request: tonic::Request<Req>,
        handler: F,
    ) -> Result<Response<Res>, Status>
    where
        F: FnOnce(Arc<auth::Caller>, Req) -> Fut,
        Fut: Future<Output = Result<Response<Res>, Status>>,
    {
        let started = Instant::now();
        let deadline = deadline(&request);
        let result = within(deadline, async {
            let who = auth::caller(&request)?;
            handler(who, request.into_inner()).await
        })
        .await;
        self.observe(method, started, &result);
        result
    }

    /// Counts a finished call by method and code.
    pub(crate) fn observe<T>(
        &self,
        method: &str,
        started: Instant,
        result: &Result<Response<T>, Status>,
    ) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics.observe_rpc(method, code, started.elapsed());
    }
}

/// When a call reached the bridge, stamped by the auth interceptor before the message is
/// decoded. tonic starts its own `grpc-timeout` timer about then, so the time left is
/// counted from here, not from when the handler first runs (on a busy machine that can be
/// long after).
#[derive(Clone, Copy)]
pub(crate) struct Arrived(pub(crate) Instant);

/// A caller's deadline: what it asked for and what is left of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    asked: Duration,
    left: Duration,
}

/// The caller's deadline (its `grpc-timeout` header), if it set one.
pub(crate) fn deadline<T>(request: &tonic::Request<T>) -> Option<Deadline> {
    let asked = grpc_timeout(request)?;
    let left = match request.extensions().get::<Arrived>() {
        Some(Arrived(at)) => asked.saturating_sub(at.elapsed()),
        None => asked,
    };
    Some(Deadline { asked, left })
}

/// The `grpc-timeout` header's value.
fn grpc_timeout<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (value, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let value: u64 = value.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Runs `work` within the caller's deadline, answering DEADLINE_EXCEEDED (and abandoning
/// the QUBS calls in flight) a little before tonic's own timer would cancel the call
/// (tonic answers CANCELLED). Should both timers be due when the task next runs, tonic
/// polls the handler first, so this one's answer still wins.
pub(crate) async fn within<T>(
    deadline: Option<Deadline>,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let Some(Deadline { asked, left }) = deadline else {
        return work.await;
    };
    let margin = (asked / 10).min(Duration::from_millis(20));
    match tokio::time::timeout(left.saturating_sub(margin), work).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the call's deadline of {} ms passed while waiting for QUBS",
            asked.as_millis()
        ))),
    }
}

fn comment(c: &qubs::Comment) -> pb::Comment {
    pb::Comment {
        guid: c.guid.clone().unwrap_or_default(),
        comment_type: c.comment_type.clone().unwrap_or_default(),
        text: c.comment_text.clone().unwrap_or_default(),
        comment_date_time: c.comment_date_time.clone().unwrap_or_default(),
        is_alert: c.is_alert(),
    }
}

fn attachment(a: &qubs::Attachment) -> pb::Attachment {
    pb::Attachment {
        guid: a.guid.clone().unwrap_or_default(),
        category: a.category.clone().unwrap_or_default(),
        file_name: a.file_name.clone().unwrap_or_default(),
        added_date_time: a.added_date_time.clone().unwrap_or_default(),
        url: a.url.clone().unwrap_or_default(),
        url_expires_at_utc: a.url_expires_at_utc.clone().unwrap_or_default(),
    }
}

/// A listening gRPC server.
pub struct GrpcServer {
    pub addr: SocketAddr,
    pub health: Health,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `addr` and serves until `shutdown`; in-flight calls finish first.
pub async fn serve(
    ctx: Arc<Context>,
    settings: &GrpcSettings,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<GrpcServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on server.grpc_listen {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let (health, health_service) = health::service(shutdown.clone()).await;
    // Both reflection versions, from the same descriptors: `grpc.reflection.v1` for current
    // tools, `v1alpha` for the many clients that still speak only it (grpcio-reflection,
    // older grpcurl, Postman, grpc_cli). Each lists both, so either finds every service.
    let descriptors = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = descriptors().build_v1()?;
    let reflection_v1alpha = descriptors().build_v1alpha()?;

    let limit = settings.max_message_bytes;
    let auth = auth::Authenticator::new(settings);
    // Every API service: gzip both ways and the configured message size limit.
    macro_rules! configured {
        ($server:expr) => {
            $server
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        };
    }
    let orders = configured!(pb::order_service_server::OrderServiceServer::new(
        orders::Orders::new(ctx.clone())
    ));
    let results = configured!(pb::result_service_server::ResultServiceServer::new(
        results::ResultsApi::new(ctx.clone())
    ));
    let outbox = configured!(pb::outbox_service_server::OutboxServiceServer::new(
        outbox::OutboxApi::new(ctx.clone())
    ));
    let feed = configured!(pb::feed_service_server::FeedServiceServer::new(
        feed::FeedApi::new(ctx.clone())
    ));
    let preview = configured!(pb::mapping_service_server::MappingServiceServer::new(
        preview::Preview::new(ctx)
    ));

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(settings.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(settings.keepalive_timeout_secs)));
    if let Some(tls) = &settings.tls {
        let cert = std::fs::read(&tls.cert_file)?;
        let key = std::fs::read(&tls.key_file)?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &tls.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
        }
        builder = builder
            .tls_config(config)
            .map_err(|e| anyhow::anyhow!("grpc.tls: {e}"))?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            orders,
            auth::interceptor(auth.clone()),
        ))
        .add_service(InterceptedService::new(
            results,
            auth::interceptor(auth.clone()),
        ))
        .add_service(InterceptedService::new(
            outbox,
            auth::interceptor(auth.clone()),
        ))
        .add_service(InterceptedService::new(
            feed,
            auth::interceptor(auth.clone()),
        ))
        .add_service(InterceptedService::new(preview, auth::interceptor(auth)));
    // TCP_NODELAY: an answer is one small write; with Nagle it can sit until the peer's
    // delayed ACK (~40 ms on Linux), which was the p99 of SubmitOru under load.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let served = router
            .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    tracing::info!(addr = %bound, tls = settings.tls.is_some(), "gRPC API listening");
    Ok(GrpcServer {
        addr: bound,
        health,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with_timeout(header: &str) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("grpc-timeout", header.parse().unwrap());
        request
    }

    #[test]
    fn the_deadline_counts_from_arrival() {
        let mut request = request_with_timeout("300m");
        let d = deadline(&request).unwrap();
        assert_eq!((d.asked, d.left), (Duration::from_millis(300), d.asked));

        let arrived = Instant::now() - Duration::from_millis(100);
        request.extensions_mut().insert(Arrived(arrived));
        let d = deadline(&request).unwrap();
        assert_eq!(d.asked, Duration::from_millis(300));
        assert!(d.left <= Duration::from_millis(200), "{d:?}");

        request
            .extensions_mut()
            .insert(Arrived(arrived - Duration::from_secs(1)));
        assert_eq!(deadline(&request).unwrap().left, Duration::ZERO);
        assert!(deadline(&tonic::Request::new(())).is_none());
        assert!(deadline(&request_with_timeout("5x")).is_none());
    }

    #[tokio::test]
    async fn a_spent_deadline_answers_deadline_exceeded_at_once() {
        let spent = Deadline {
            asked: Duration::from_millis(300),
            left: Duration::ZERO,
        };
        let started = Instant::now();
        let status = within(Some(spent), std::future::pending::<Result<(), Status>>())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("300 ms"), "{status:?}");
        assert!(started.elapsed() < Duration::from_millis(250));
        assert_eq!(within(None, async { Ok(7) }).await.unwrap(), 7);
    }
}
