//! # qubs-bridge
//!
//! An integration bridge between **QUBS**, a radiology practice-management system with a
//! partner REST API, and the hospital systems around it: interface engines calling gRPC,
//! HL7 v2 feed consumers on MLLP, and integration analysts who own the mappings.
//!
//! ## A walk through the components
//!
//! Data flows from QUBS to the hospital and results flow back:
//!
//! 1. [`config`] reads the settings: built-in defaults, a TOML file, then
//!    `QUBS_BRIDGE__SECTION__KEY` environment variables; everything is validated before the
//!    service starts, and each problem names its key.
//! 2. [`qubs`] is the QUBS client. It gets OAuth2 tokens (cached, refreshed early, one
//!    request at a time), sends an `X-Correlation-Id` with every call, turns RFC 7807
//!    problems into typed errors, retries what is safe to retry with back-off, and reads
//!    QUBS's loosely specified JSON tolerantly: an [`qubs::Appointment`] is the object QUBS
//!    sent, so mapping files can reach any field.
//! 3. [`domain`] holds the types the rest of the bridge speaks in, such as
//!    [`domain::ReportSubmission`]; [`orders`] assembles an order (appointment, comments,
//!    attachments, site settings) into the JSON document mappings read. [`pending_list`]
//!    keeps every appointment as QUBS last listed it, by id: QUBS documents no other way
//!    to read one appointment, so `GetOrder`, the result worker and the feed look there.
//! 4. [`hl7`] reads and writes HL7 v2 ER7: the character set of received bytes (UTF-8,
//!    MSH-18, else Windows-1252), escaping and formatted text, a lazy zero-copy reader for
//!    the hot path, a writer that escapes automatically and builds a correct MSH. [`mllp`] carries
//!    HL7 over TCP (optionally TLS): the MLLP codec, a listener and a client.
//! 5. [`mapping`] is the declarative mapping engine: YAML files in `mappings/`, compiled in
//!    passes (parse, resolve, check, lower; every problem with file:line:column, LOINC
//!    check digits included, custom Z-segments declared in the file) to evaluation plans,
//!    and evaluated over slots resolved once per input into FHIR R4 JSON (with contained
//!    resources), HL7 ORM^O01, or (inbound) QUBS report submissions. Every output passes
//!    [`mapping::output_check`] before it leaves; [`mapping::trace`] records, on request,
//!    how each output field came about (`map --explain`, `PreviewMapping`); inbound DiagnosticReports are first read by
//!    [`mapping::fhir_report`] (presentedForm text, HTML as plain text, contained and
//!    `ServiceRequest/{id}` references). Each mapping lists the input fields it leaves out,
//!    with the reason (`qubs-bridge mappings fields`); [`mapping::unread`] finds what no rule
//!    of a mapping reads in one input (JSON paths, HL7 positions, element paths) and
//!    [`mapping::schema`] lists every field a mapping can read. The analyst's golden cases
//!    ([`mapping::golden`]) compare outputs field by field and match expected errors by kind
//!    and target. A value no code table knows still goes out (as the table's default);
//!    [`unmapped`] counts it per mapping and table and logs the appointment, never the value.
//! 6. [`grpc`] is the API for interface engines (`proto/qubs_bridge/v1/bridge.proto`):
//!    authenticated per caller and domain, with health (Check and Watch), reflection
//!    (v1 and v1alpha) and metrics ([`metrics`]).
//! 7. [`results`] takes results in (ORU^R01 over gRPC or MLLP, FHIR DiagnosticReports,
//!    plain reports), maps them, commits them to the durable [`outbox`] before any ACK
//!    promises them, and answers with the ACK HL7 prescribes; its worker then submits each
//!    report to QUBS with a content-derived idempotency key, retrying what may succeed later
//!    and keeping dead letters for what never will.
//! 8. [`feed`] watches QUBS for new, changed and removed orders and pushes them as
//!    ORM^O01 to feed consumers over MLLP or as files, each destination with its own durable
//!    queue, and to gRPC `WatchOrders` streams. After a mapping change it re-sends (XO)
//!    the orders whose message the new mapping set changes ([`feed::resend`]).
//! 9. The outbox, the feed, the pending list and the console keep their state in the
//!    [`store`], each through its own storage interface, on one of two backends: the
//!    embedded SQLite file (the default, one process) or PostgreSQL, shared by several
//!    replicas that claim work with leases and elect one leader per domain poll,
//!    destination and retention ([`store::leader`]). Retry loops share one [`backoff`] rule.
//! 10. [`service`] runs the long-lived parts, and [`admin`] serves `/healthz`, `/readyz`,
//!     `/metrics` and the web [`console`] (sign-in with roles and an audit log; the
//!     operations dashboard and the mapping playground over a JSON API that calls the same
//!     functions as the CLI and gRPC).
//!     [`shutdown`] gives every task one cancellation token, fired by SIGINT/SIGTERM, so
//!     in-flight work finishes before the process exits.
//! 11. [`telemetry`] sets up logging and states the PHI rule: identifiers and counts only,
//!     never patient data, report text or secrets.
//! 12. [`simulator`] is a faithful QUBS simulator (tokens, paging, presigned URLs, report
//!     rules, idempotency, fault injection, request log, demo data), with a strict mode
//!     that serves only what QUBS's documentation describes. Only the CLI
//!     (`serve --demo`, `simulator`) and the tests use it; the bridge reaches it over HTTP
//!     exactly as it reaches QUBS.
//! 13. [`cli`] is the `qubs-bridge` command line; `main.rs` only calls it. Every command
//!     prints records on stdout (text, or JSON lines), notes and errors on stderr, and ends
//!     with a documented exit status ([`cli::exit`]).
//!
//! Imports run from the edges (CLI, service, admin) to the ports (QUBS client) and the core
//! (domain types), never the other way round.

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod console;
pub mod domain;
pub mod feed;
pub mod grpc;
pub mod hl7;
pub mod live_mappings;
pub mod mapping;
pub mod metrics;
pub mod mllp;
pub mod orders;
pub mod outbox;
pub mod pending_list;
pub mod qubs;
pub mod results;
pub mod service;
pub mod shutdown;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod unmapped;
