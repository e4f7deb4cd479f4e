//! The QUBS Integrations API client: every documented endpoint, with authentication,
//! correlation ids, typed errors and retries in one place ([`Client::execute`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use super::auth::TokenSource;
use super::model::{
    Appointment, Attachment, Comment, Disposition, PendingPage, ReportAttachmentFile,
    ReportAttachmentUpload, ReportReceipt, Site, SiteSettings, from_item, json_kind, read_items,
};
use super::problem::{Error, ErrorKind, Problem, excerpt};
use super::retry::{RetryPolicy, parse_retry_after};
use super::sites::SiteZones;
use crate::config::{ConfigError, QubsSettings};
use crate::domain::{ReportStatus, ReportSubmission};

pub use crate::domain::MAX_REPORT_TEXT_BYTES;
/// QUBS documents at most 2 MB per presigned PUT.
pub const MAX_UPLOAD_BYTES: usize = 2 * 1024 * 1024;
/// The operation name of the report-attachment registration, as errors carry it.
pub const REGISTER_REPORT_ATTACHMENTS: &str = "POST report attachments";
/// At most this many files per report-attachment registration.
pub const MAX_REPORT_ATTACHMENTS: usize = 20;
/// JSON bodies larger than this are refused rather than buffered.
const MAX_JSON_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Told about every QUBS HTTP exchange, for metrics. Implementations must be cheap.
pub trait CallObserver: Send + Sync {
    /// One HTTP attempt finished: its status, or `None` when no answer came.
    fn qubs_response(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);
    /// A new access token was fetched.
    fn token_fetched(&self);
    /// A non-empty page of the pending list had no item with an appointment id: QUBS may
    /// name the id differently, and nothing of the domain can be read.
    fn pending_page_without_ids(&self, _domain: &str) {}
}

/// A cheap-to-clone handle on the QUBS API.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: TokenSource,
    retry: RetryPolicy,
    request_timeout: Duration,
    page_size: u32,
    attachment_url_ttl_secs: u32,
    site_ttl: Duration,
    site_cache: Mutex<HashMap<(String, String), (Instant, SiteSettings)>>,
    /// Time zones from configuration, and what is known of the sites endpoint.
    pub(super) sites: SiteZones,
    /// `qubs.endpoints.appointment`: the single-appointment GET may be used.
    appointment_endpoint: bool,
    observer: Option<Arc<dyn CallObserver>>,
}

/// One logical API call; [`Client::execute`] turns it into one or more HTTP attempts.
struct Call<'a> {
    operation: &'static str,
    method: Method,
    url: Url,
    body: Option<Bytes>,
    content_type: &'a str,
    idempotency_key: Option<&'a str>,
    /// Presigned URLs carry their own authorisation.
    bearer: bool,
}

/// A response that came back (any status), body read.
struct Reply {
    /// The `X-Correlation-Id` the request was sent with.
    correlation_id: Uuid,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// A streaming download of a presigned attachment URL.
pub struct Download {
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    /// The content in chunks as they arrive; never buffered whole.
    pub chunks: BoxStream<'static, Result<Bytes, Error>>,
}

impl Client {
    /// A client for `settings` (the secret is read now, from the environment or its file).
    pub fn new(settings: &QubsSettings) -> Result<Client, ConfigError> {
        Self::with_observer(settings, None)
    }

    /// As [`Client::new`], reporting every exchange to `observer` (metrics).
    pub fn with_observer(
        settings: &QubsSettings,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<Client, ConfigError> {
        let secret = settings.client_secret()?;
        let base = Url::parse(settings.base_url()).map_err(|e| ConfigError::Invalid {
            key: "qubs.base_url".into(),
            reason: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout())
            .user_agent(concat!("qubs-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Load(format!("cannot build the HTTP client: {e}")))?;
        let auth = TokenSource::new(
            http.clone(),
            settings.token_url().to_string(),
            settings.client_id.clone(),
            secret,
            settings.auth.clone(),
            Duration::from_secs(settings.token_refresh_margin_secs),
        );
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                retry: RetryPolicy::from(&settings.retry),
                request_timeout: settings.request_timeout(),
                page_size: settings.page_size,
                attachment_url_ttl_secs: settings.attachment_url_ttl_secs,
                site_ttl: Duration::from_secs(settings.site_cache_ttl_secs),
                site_cache: Mutex::new(HashMap::new()),
                sites: SiteZones::new(settings),
                appointment_endpoint: settings.endpoints.appointment,
                observer,
            }),
        })
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Tokens fetched from the token endpoint since start.
    pub fn tokens_fetched(&self) -> u64 {
        self.inner.auth.tokens_fetched()
    }

    /// The configured page size for the pending list.
    pub fn site_cache_ttl(&self) -> Duration {
        self.inner.site_ttl
    }

    pub fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    /// Whether `GET {domain}/reporting/appointments/{id}` may be used
    /// (`qubs.endpoints.appointment`); QUBS does not document it.
    pub fn has_appointment_endpoint(&self) -> bool {
        self.inner.appointment_endpoint
    }

    // ---- pending appointments -------------------------------------------------------------

    /// One page of appointments pending reporting. `page_size` defaults to the configured one.
    pub async fn pending_page(
        &self,
        domain: &str,
        next_token: Option<&str>,
        page_size: Option<u32>,
    ) -> Result<PendingPage, Error> {
        let mut url = self.url(&[domain, "reporting", "appointments", "pending"]);
        url.query_pairs_mut().append_pair(
            "pageSize",
            &page_size.unwrap_or(self.inner.page_size).to_string(),
        );
        if let Some(token) = next_token {
            url.query_pairs_mut().append_pair("nextToken", token);
        }
        let reply = self
            .execute(Call::get("GET pending appointments", url))
            .await?;
        let fail = |reason: String| decode_error("GET pending appointments", &reply, reason);
        let value: Value = reply_json(&reply).map_err(&fail)?;
        let Value::Object(mut page) = value else {
            return Err(fail(format!(
                "expected a page object, found {}",
                json_kind(&value)
            )));
        };
        let items = match page.remove("items") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(other) => {
                return Err(fail(format!(
                    "`items` must be an array, found {}",
                    json_kind(&other)
                )));
            }
        };
        let next_token = match page.remove("nextToken") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::String(_)) | Some(Value::Null) | None => None,
            Some(other) => {
                return Err(fail(format!(
                    "`nextToken` must be a string, found {}",
                    json_kind(&other)
                )));
            }
        };
        let listed = items.len();
        let (appointments, skipped) = read_items(items, "appointmentId", Appointment::from_json);
        if listed > 0 && skipped.len() == listed && skipped.iter().all(|s| s.id.is_none()) {
            // One line, not one per item: the id field itself is what is wrong.
            tracing::warn!(
                domain,
                items = listed,
                reason = %skipped[0].reason,
                "no item of a pending page has an appointmentId; QUBS may name the id differently"
            );
            if let Some(o) = &self.inner.observer {
                o.pending_page_without_ids(domain);
            }
        } else {
            for s in &skipped {
                tracing::warn!(
                    domain,
                    index = s.index,
                    appointment_id = s.id.as_deref().unwrap_or("-"),
                    reason = %s.reason,
                    "skipped a malformed pending appointment"
                );
            }
        }
        Ok(PendingPage {
            appointments,
            skipped,
            next_token,
        })
    }

    /// Every page of the pending list, following `nextToken` until QUBS gives none.
    /// Stops after the first error (which it yields).
    pub fn pending_pages(
        &self,
        domain: &str,
    ) -> impl Stream<Item = Result<PendingPage, Error>> + Send + 'static {
        let client = self.clone();
        let domain = domain.to_string();
        futures::stream::try_unfold(Some(None::<String>), move |cursor| {
            let client = client.clone();
            let domain = domain.clone();
            async move {
                let Some(token) = cursor else {
                    return Ok(None);
                };
                let page = client.pending_page(&domain, token.as_deref(), None).await?;
                if page.next_token.is_some() && page.next_token == token {
                    return Err(Error {
                        operation: "GET pending appointments",
                        correlation_id: Uuid::nil(),
                        attempts: 1,
                        kind: ErrorKind::Decode(
                            "QUBS returned the same nextToken again; paging stopped".into(),
                        ),
                        retry_after: None,
                    });
                }
                let next = page.next_token.clone().map(Some);
                Ok(Some((page, next)))
            }
        })
    }

    /// Every appointment pending reporting, page after page. Malformed items are logged
    /// (id and reason) and left out.
    pub fn pending_appointments(
        &self,
        domain: &str,
    ) -> impl Stream<Item = Result<Appointment, Error>> + Send + 'static {
        self.pending_pages(domain)
            .map_ok(|page| futures::stream::iter(page.appointments.into_iter().map(Ok)))
            .try_flatten()
    }

    /// One appointment, whatever its status. Not documented by QUBS: callers use it only
    /// when [`Client::has_appointment_endpoint`] says so.
    pub async fn appointment(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Appointment, Error> {
        let url = self.url(&[domain, "reporting", "appointments", appointment_id]);
        let reply = self.execute(Call::get("GET appointment", url)).await?;
        let value = reply_json(&reply).map_err(|r| decode_error("GET appointment", &reply, r))?;
        Appointment::from_json(value).map_err(|r| decode_error("GET appointment", &reply, r))
    }

    // ---- attachments ----------------------------------------------------------------------

    /// The appointment's attachments with fresh presigned URLs.
    pub async fn attachments(
        &self,
        domain: &str,
        appointment_id: &str,
        disposition: Disposition,
    ) -> Result<Vec<Attachment>, Error> {
        let mut url = self.url(&[
            domain,
            "reporting",
            "appointments",
            appointment_id,
            "attachments",
        ]);
        self.attachment_query(&mut url, disposition);
        self.list("GET attachments", url, "guid").await
    }

    /// One attachment's metadata with a fresh presigned URL.
    pub async fn attachment(
        &self,
        domain: &str,
        appointment_id: &str,
        attachment_guid: &str,
        disposition: Disposition,
    ) -> Result<Attachment, Error> {
        let mut url = self.url(&[
            domain,
            "reporting",
            "appointments",
            appointment_id,
            "attachments",
            attachment_guid,
        ]);
        self.attachment_query(&mut url, disposition);
        self.one("GET attachment", url).await
    }

    fn attachment_query(&self, url: &mut Url, disposition: Disposition) {
        url.query_pairs_mut()
            .append_pair(
                "urlTtlSeconds",
                &self.inner.attachment_url_ttl_secs.to_string(),
            )
            .append_pair("disposition", disposition.as_str());
    }

    /// Streams an attachment's content from its presigned URL, refusing an expired URL
    /// up front (ask for the attachment again to get a fresh one).
    pub async fn download_attachment(&self, attachment: &Attachment) -> Result<Download, Error> {
        let guid = attachment.guid.as_deref().unwrap_or("(no guid)");
        let invalid = |reason: String| invalid_request("GET attachment content", reason);
        let Some(url) = attachment.url.as_deref() else {
            return Err(invalid(format!("attachment {guid} has no download URL")));
        };
        if let Some(expiry) = attachment.url_expires_at()
            && expiry <= jiff::Timestamp::now()
        {
            return Err(invalid(format!(
                "the presigned URL of attachment {guid} expired at {expiry}; fetch the attachment again for a fresh URL"
            )));
        }
        self.download(url).await
    }

    /// Streams the content behind a presigned URL (no bearer token is sent to it).
    pub async fn download(&self, url: &str) -> Result<Download, Error> {
        let url = Url::parse(url)
            .map_err(|e| invalid_request("GET attachment content", format!("not a URL: {e}")))?;
        let call = Call {
            bearer: false,
            ..Call::get("GET attachment content", url)
        };
        let response = self.execute_streaming(call).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_length = response.content_length();
        let chunks = response
            .bytes_stream()
            .map_err(|e| transport_error(&e, "GET attachment content"))
            .boxed();
        Ok(Download {
            content_type,
            content_length,
            chunks,
        })
    }

    // ---- comments -------------------------------------------------------------------------

    /// Appointment and patient comments and alerts of an appointment.
    pub async fn comments(
        &self,
        domain: &str,
        appointment_id: &str,
    ) -> Result<Vec<Comment>, Error> {
        let url = self.url(&[
            domain,
            "reporting",
            "appointments",
            appointment_id,
            "comments",
        ]);
        self.list("GET comments", url, "guid").await
    }

    /// One comment or alert.
    pub async fn comment(
        &self,
        domain: &str,
        appointment_id: &str,
        comment_guid: &str,
    ) -> Result<Comment, Error> {
        let url = self.url(&[
            domain,
            "reporting",
            "appointments",
            appointment_id,
            "comments",
            comment_guid,
        ]);
        self.one("GET comment", url).await
    }

    // ---- sites ----------------------------------------------------------------------------

    /// The domain's sites. The answer also tells [`Client::site_for`] whether the (assumed)
    /// sites endpoint exists.
    pub async fn sites(&self, domain: &str) -> Result<Vec<Site>, Error> {
        let url = self.url(&[domain, "sites"]);
        let listed = self.list("GET sites", url, "siteName").await;
        match &listed {
            Ok(_) => self.inner.sites.endpoint_found(domain, true),
            Err(e) if super::sites::endpoint_missing(e) => {
                self.inner.sites.endpoint_found(domain, false)
            }
            Err(_) => {}
        }
        listed
    }

    /// A site's settings, served from a cache for `site_cache_ttl_secs`.
    pub async fn site_settings(
        &self,
        domain: &str,
        site_name: &str,
    ) -> Result<SiteSettings, Error> {
        let key = (domain.to_string(), site_name.to_string());
        if let Some((at, settings)) = self.inner.site_cache.lock().expect("site cache").get(&key)
            && at.elapsed() < self.inner.site_ttl
        {
            return Ok(settings.clone());
        }
        let url = self.url(&[domain, "sites", site_name]);
        let settings: SiteSettings = self.one("GET site settings", url).await?;
        self.inner
            .site_cache
            .lock()
            .expect("site cache")
            .insert(key, (Instant::now(), settings.clone()));
        Ok(settings)
    }

    /// The IANA time zone of a site, from its (cached) settings.
    pub async fn site_time_zone(
        &self,
        domain: &str,
        site_name: &str,
    ) -> Result<jiff::tz::TimeZone, Error> {
        let settings = self.site_settings(domain, site_name).await?;
        let invalid = |reason: String| Error {
            operation: "GET site settings",
            correlation_id: Uuid::nil(),
            attempts: 1,
            kind: ErrorKind::Decode(reason),
            retry_after: None,
        };
        let name = settings
            .time_zone
            .as_deref()
            .filter(|z| !z.trim().is_empty())
            .ok_or_else(|| invalid(format!("site `{site_name}` has no timeZone setting")))?;
        jiff::tz::TimeZone::get(name.trim()).map_err(|_| {
            invalid(format!(
                "site `{site_name}` has timeZone `{name}`, which is not an IANA time zone"
            ))
        })
    }

    // ---- reports --------------------------------------------------------------------------

    /// Submits (overwrites) the report of an appointment. With an `idempotency_key` the call
    /// is retried on transient failures, always with that same key; without one it is sent
    /// once, since a retry could create a second report.
    pub async fn submit_report(
        &self,
        domain: &str,
        report: &ReportSubmission,
        idempotency_key: Option<&str>,
    ) -> Result<ReportReceipt, Error> {
        const OP: &str = "POST report";
        if report.report_text.len() > MAX_REPORT_TEXT_BYTES {
            return Err(invalid_request(
                OP,
                format!(
                    "reportText of appointment {} is {} bytes; QUBS accepts at most {MAX_REPORT_TEXT_BYTES}",
                    report.appointment_id,
                    report.report_text.len()
                ),
            ));
        }
        check_idempotency_key(OP, idempotency_key)?;
        let body = ReportBody::from(report);
        let url = self.url(&[
            domain,
            "reporting",
            "appointments",
            &report.appointment_id,
            "report",
        ]);
        let call = Call::post_json(OP, url, &body, idempotency_key);
        let reply = self.execute(call).await?;
        from_item(reply_json(&reply).map_err(|r| decode_error(OP, &reply, r))?)
            .map_err(|r| decode_error(OP, &reply, r))
    }

    /// Registers files (PDF or DICOM) as attachments of the appointment's report; QUBS answers
    /// with a presigned upload URL per file.
    pub async fn register_report_attachments(
        &self,
        domain: &str,
        appointment_id: &str,
        files: &[ReportAttachmentFile],
        idempotency_key: Option<&str>,
    ) -> Result<Vec<ReportAttachmentUpload>, Error> {
        const OP: &str = REGISTER_REPORT_ATTACHMENTS;
        if files.is_empty() || files.len() > MAX_REPORT_ATTACHMENTS {
            return Err(invalid_request(
                OP,
                format!(
                    "register 1 to {MAX_REPORT_ATTACHMENTS} files at a time, not {}",
                    files.len()
                ),
            ));
        }
        check_idempotency_key(OP, idempotency_key)?;
        let url = self.url(&[
            domain,
            "reporting",
            "appointments",
            appointment_id,
            "report",
            "attachments",
        ]);
        let body = serde_json::json!({ "files": files });
        let reply = self
            .execute(Call::post_json(OP, url, &body, idempotency_key))
            .await?;
        let value = reply_json(&reply).map_err(|r| decode_error(OP, &reply, r))?;
        let items = match value {
            Value::Object(mut o) => match o.remove("attachments") {
                Some(Value::Array(items)) => items,
                _ => return Err(decode_error(OP, &reply, "no `attachments` array".into())),
            },
            other => {
                return Err(decode_error(
                    OP,
                    &reply,
                    format!("expected an object, found {}", json_kind(&other)),
                ));
            }
        };
        let (uploads, skipped) = read_items(items, "attachmentGuid", from_item);
        if let Some(bad) = skipped.first() {
            return Err(decode_error(OP, &reply, bad.to_string()));
        }
        Ok(uploads)
    }

    /// Uploads one registered attachment's content with an HTTP PUT to its presigned URL.
    pub async fn upload_report_attachment(
        &self,
        upload: &ReportAttachmentUpload,
        content_type: &str,
        content: Bytes,
    ) -> Result<(), Error> {
        const OP: &str = "PUT report attachment content";
        if content.len() > MAX_UPLOAD_BYTES {
            return Err(invalid_request(
                OP,
                format!(
                    "attachment {} is {} bytes; one upload takes at most {MAX_UPLOAD_BYTES}",
                    upload.attachment_guid,
                    content.len()
                ),
            ));
        }
        let url = Url::parse(&upload.upload_url)
            .map_err(|e| invalid_request(OP, format!("upload URL is not a URL: {e}")))?;
        let call = Call {
            operation: OP,
            method: Method::PUT,
            url,
            body: Some(content),
            content_type,
            idempotency_key: None,
            bearer: false,
        };
        self.execute(call).await.map(|_| ())
    }

    // ---- plumbing -------------------------------------------------------------------------

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("base_url was validated as http(s)")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
        id_field: &str,
    ) -> Result<Vec<T>, Error> {
        let reply = self.execute(Call::get(operation, url)).await?;
        let items = match reply_json(&reply).map_err(|r| decode_error(operation, &reply, r))? {
            Value::Array(items) => items,
            other => {
                return Err(decode_error(
                    operation,
                    &reply,
                    format!("expected an array, found {}", json_kind(&other)),
                ));
            }
        };
        let (good, skipped) = read_items(items, id_field, from_item);
        for s in &skipped {
            tracing::warn!(
                operation,
                index = s.index,
                id = s.id.as_deref().unwrap_or("-"),
                reason = %s.reason,
                "skipped a malformed item"
            );
        }
        Ok(good)
    }

    async fn one<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<T, Error> {
        let reply = self.execute(Call::get(operation, url)).await?;
        let value = reply_json(&reply).map_err(|r| decode_error(operation, &reply, r))?;
        from_item(value).map_err(|r| decode_error(operation, &reply, r))
    }

    /// Runs a call to completion: bearer token, correlation id, one re-authentication after
    /// a 401 or 403, and retries with back-off for transient failures while the budget lasts.
    async fn execute(&self, call: Call<'_>) -> Result<Reply, Error> {
        let correlation_id = Uuid::new_v4();
        let span = tracing::debug_span!("qubs_call", operation = call.operation, %correlation_id);
        async {
            self.with_retries(&call, correlation_id, |deadline| {
                self.attempt(&call, correlation_id, deadline)
            })
            .await
        }
        .instrument(span)
        .await
    }

    /// As [`Client::execute`], but hands back the response before its body is read.
    async fn execute_streaming(&self, call: Call<'_>) -> Result<reqwest::Response, Error> {
        let correlation_id = Uuid::new_v4();
        let span = tracing::debug_span!("qubs_call", operation = call.operation, %correlation_id);
        let call = &call;
        async {
            self.with_retries(call, correlation_id, |deadline| async move {
                let (response, generation) = self.send(call, correlation_id, deadline).await?;
                let status = response.status();
                if status.is_success() {
                    return Ok(Attempt::Done(response));
                }
                let reply = read_reply(response, call.operation, 64 * 1024, correlation_id).await?;
                Ok(Attempt::Failed(reply, generation))
            })
            .await
        }
        .instrument(span)
        .await
    }

    async fn with_retries<'c, T, F, Fut>(
        &self,
        call: &Call<'c>,
        correlation_id: Uuid,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Instant) -> Fut,
        Fut: Future<Output = Result<Attempt<T>, Error>>,
    {
        let policy = &self.inner.retry;
        let deadline = Instant::now() + policy.max_elapsed;
        // GETs and PUTs (of the same bytes) are safe to repeat; a POST only with a key.
        let may_retry = call.method != Method::POST || call.idempotency_key.is_some();
        let mut attempts = 0u32;
        let mut reauthenticated = false;
        loop {
            attempts += 1;
            let outcome = attempt(deadline).await;
            let mut error = match outcome {
                Ok(Attempt::Done(value)) => return Ok(value),
                Ok(Attempt::Failed(reply, generation)) => {
                    let refused = matches!(
                        reply.status,
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    );
                    if refused && call.bearer && !reauthenticated {
                        // The token was refused (revoked, key rotated) or lacks a domain it
                        // may have gained since (403 after a rotation): a new one, once.
                        reauthenticated = true;
                        if let Some(generation) = generation {
                            self.inner.auth.invalidate(generation).await;
                        }
                        tracing::info!(
                            status = reply.status.as_u16(),
                            "QUBS refused the token; re-authenticating"
                        );
                        continue;
                    }
                    error_from_reply(call.operation, &reply)
                }
                Err(e) => e,
            };
            error.correlation_id = correlation_id;
            error.attempts = attempts;
            if !may_retry || !error.is_transient() || attempts >= policy.max_attempts {
                return Err(error);
            }
            let delay = policy.delay(attempts, error.retry_after);
            if Instant::now() + delay >= deadline {
                tracing::warn!(attempts, error = %error, "QUBS retry budget exhausted");
                return Err(error);
            }
            tracing::warn!(
                attempt = attempts,
                status = error.status().map(|s| s.as_u16()),
                delay_ms = delay.as_millis() as u64,
                "QUBS call failed, retrying: {error}"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        call: &Call<'_>,
        correlation_id: Uuid,
        deadline: Instant,
    ) -> Result<Attempt<Reply>, Error> {
        let (response, generation) = self.send(call, correlation_id, deadline).await?;
        let reply = read_reply(
            response,
            call.operation,
            MAX_JSON_BODY_BYTES,
            correlation_id,
        )
        .await?;
        if reply.status.is_success() {
            Ok(Attempt::Done(reply))
        } else {
            Ok(Attempt::Failed(reply, generation))
        }
    }

    /// Sends one HTTP request; answers the response and the token generation it carried.
    async fn send(
        &self,
        call: &Call<'_>,
        correlation_id: Uuid,
        deadline: Instant,
    ) -> Result<(reqwest::Response, Option<u64>), Error> {
        let inner = &self.inner;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = inner
            .request_timeout
            .min(remaining)
            .max(Duration::from_millis(1));
        let mut request = inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header("X-Correlation-Id", correlation_id.to_string())
            .timeout(timeout);
        let mut generation = None;
        if call.bearer {
            let (token, fetched) = inner.auth.token(correlation_id).await?;
            if fetched && let Some(o) = &inner.observer {
                o.token_fetched();
            }
            generation = Some(token.generation);
            request = request.bearer_auth(token.value.expose_secret());
        }
        if let Some(key) = call.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, call.content_type)
                .body(body.clone());
        }
        let started = Instant::now();
        let sent = request.send().await;
        if let Some(o) = &inner.observer {
            let status = sent.as_ref().ok().map(|r| r.status().as_u16());
            o.qubs_response(call.operation, status, started.elapsed());
        }
        let response = sent.map_err(|e| transport_error(&e, call.operation))?;
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "QUBS answered"
        );
        Ok((response, generation))
    }
}

/// What one attempt gave: the wanted value, or an error status to judge (with the token
/// generation used, for re-authentication).
enum Attempt<T> {
    Done(T),
    Failed(Reply, Option<u64>),
}

impl<'a> Call<'a> {
    fn get(operation: &'static str, url: Url) -> Call<'a> {
        Call {
            operation,
            method: Method::GET,
            url,
            body: None,
            content_type: "application/json",
            idempotency_key: None,
            bearer: true,
        }
    }

    fn post_json(
        operation: &'static str,
        url: Url,
        body: &impl Serialize,
        idempotency_key: Option<&'a str>,
    ) -> Call<'a> {
        Call {
            operation,
            method: Method::POST,
            url,
            body: Some(Bytes::from(
                serde_json::to_vec(body).expect("request bodies serialize"),
            )),
            content_type: "application/json",
            idempotency_key,
            bearer: true,
        }
    }
}

/// The report POST body: the submission without its routing fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportBody<'a> {
    report_text: &'a str,
    report_status: ReportStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    report_format: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interpreting_clinician_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interpreting_clinician_provider_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interpreting_clinician_email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported_at_utc: Option<String>,
}

impl<'a> From<&'a ReportSubmission> for ReportBody<'a> {
    fn from(r: &'a ReportSubmission) -> Self {
        ReportBody {
            report_text: &r.report_text,
            report_status: r.report_status,
            report_format: r.report_format.as_deref(),
            interpreting_clinician_name: r.interpreting_clinician_name.as_deref(),
            interpreting_clinician_provider_number: r
                .interpreting_clinician_provider_number
                .as_deref(),
            interpreting_clinician_email: r.interpreting_clinician_email.as_deref(),
            reported_at_utc: r.reported_at_utc.map(|t| t.to_string()),
        }
    }
}

fn check_idempotency_key(operation: &'static str, key: Option<&str>) -> Result<(), Error> {
    match key {
        Some(k) if k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(invalid_request(
                operation,
                "Idempotency-Key must be 1 to 128 printable ASCII characters".into(),
            ))
        }
        _ => Ok(()),
    }
}

fn invalid_request(operation: &'static str, reason: String) -> Error {
    Error {
        operation,
        correlation_id: Uuid::nil(),
        attempts: 0,
        kind: ErrorKind::InvalidRequest(reason),
        retry_after: None,
    }
}

/// Reads a response body, refusing one over `limit` bytes.
async fn read_reply(
    mut response: reqwest::Response,
    operation: &'static str,
    limit: usize,
    correlation_id: Uuid,
) -> Result<Reply, Error> {
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let too_large = || Error {
        operation,
        correlation_id: Uuid::nil(),
        attempts: 1,
        kind: ErrorKind::Decode(format!("response body is over {limit} bytes")),
        retry_after: None,
    };
    if response
        .content_length()
        .is_some_and(|n| n as usize > limit)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(&e, operation))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        correlation_id,
        status,
        headers,
        body: Bytes::from(body),
    })
}

/// A reqwest failure as a client error: timeout, connect or other transport fault.
pub(crate) fn transport_error(e: &reqwest::Error, operation: &'static str) -> Error {
    let mut message = e.to_string();
    if let Some(url) = e.url() {
        message = message.replace(url.as_str(), &redacted_url(url));
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    let kind = if e.is_builder() {
        // Nothing was sent: the request itself cannot be made (an id too long for a
        // URL, say). Trying again cannot help, and the caller's input is what to fix.
        ErrorKind::InvalidRequest(format!("the request cannot be built: {message}"))
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect(message)
    } else {
        ErrorKind::Transport(message)
    };
    Error {
        operation,
        correlation_id: Uuid::nil(),
        attempts: 1,
        kind,
        retry_after: None,
    }
}

/// A URL fit for messages: no query, and no long path segment (presigned URLs carry their
/// signature in one or the other).
fn redacted_url(url: &Url) -> String {
    let path: Vec<&str> = url
        .path_segments()
        .map(|segments| {
            segments
                .map(|s| if s.len() > 64 { "…" } else { s })
                .collect()
        })
        .unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}/{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        path.join("/")
    )
}

/// An error status as a typed error: the RFC 7807 problem when the body is one.
fn error_from_reply(operation: &'static str, reply: &Reply) -> Error {
    let content_type = reply
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let problem = content_type
        .as_deref()
        .filter(|ct| ct.contains("json"))
        .and_then(|_| serde_json::from_slice::<Problem>(&reply.body).ok())
        .filter(|p| p.problem_type.is_some() || p.status.is_some() || p.title.is_some());
    let kind = match problem {
        Some(problem) => ErrorKind::Problem {
            status: reply.status,
            problem: Box::new(problem),
        },
        None => ErrorKind::Status {
            status: reply.status,
            content_type,
            excerpt: excerpt(&reply.body, 200),
        },
    };
    Error {
        operation,
        correlation_id: Uuid::nil(),
        attempts: 1,
        kind,
        retry_after: parse_retry_after(&reply.headers),
    }
}

/// A success response whose body is not what the API documents. The error carries the
/// correlation id the request was sent with: QUBS need not echo it back.
fn decode_error(operation: &'static str, reply: &Reply, reason: String) -> Error {
    Error {
        operation,
        correlation_id: reply.correlation_id,
        attempts: 1,
        kind: ErrorKind::Decode(reason),
        retry_after: None,
    }
}

/// A success response's body as JSON. A body that is not JSON is described by its content
/// type when that says it is something else (a proxy's HTML page), else by position.
fn reply_json(reply: &Reply) -> Result<Value, String> {
    parse_json(&reply.body).map_err(|reason| {
        match reply
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|ct| !ct.to_ascii_lowercase().contains("json"))
        {
            Some(ct) => format!(
                "the response is {}, not JSON",
                ct.split(';').next().unwrap_or(ct).trim()
            ),
            None => reason,
        }
    })
}

/// Parses JSON, describing a syntax error by position only (the body is PHI).
fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("malformed JSON ({})", crate::domain::json_error(&e)))
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}
