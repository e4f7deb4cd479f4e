//! The integration tests, one binary (each file under `tests/` would link the whole crate
//! again): real servers on 127.0.0.1:0, the real tonic client, real MLLP sockets, the
//! embedded QUBS simulator over HTTP. Tests that need the process to themselves (a
//! process-wide log subscriber, panic counting, peak memory) live in `tests/exclusive/`.

mod common;

mod ack_conformance;
mod ack_versions;
mod analyst_loop;
mod cli;
mod cli_scripting;
mod console;
mod console_browser;
mod crash_recovery;
mod feed;
mod feed_resend;
mod fidelity;
mod fuzz_regressions;
mod grpc_discovery;
mod grpc_orders;
mod grpc_results;
mod grpc_tls;
mod hl7_roundtrip;
mod hl7_samples;
mod inbound_fidelity;
mod mapping_checks;
mod mapping_engine;
mod mapping_golden;
mod mapping_reload;
mod mapping_trace;
mod mllp_results;
mod mllp_transport;
mod properties;
mod qubs_client;
mod qubs_contract;
mod replicas;
mod results_outbox;
mod security;
mod service_lifecycle;
mod store_suite;
