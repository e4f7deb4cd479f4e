//! The integration tests, one binary (each file under `tests/` would link the whole crate
//! again): real servers on 127.0.0.1:0, the real tonic client, real MLLP sockets, the
//! embedded QUBS simulator over HTTP. Tests that install a process-wide log subscriber
//! live in `tests/logs/`, their own binary.

mod common;

mod ack_conformance;
mod bad_input;
mod cli;
mod crash_recovery;
mod feed;
mod fuzz_regressions;
mod grpc_orders;
mod grpc_results;
mod grpc_tls;
mod hl7_roundtrip;
mod hl7_samples;
mod mapping_checks;
mod mapping_engine;
mod mapping_golden;
mod mapping_reload;
mod mllp_results;
mod mllp_transport;
mod properties;
mod qubs_client;
mod qubs_contract;
mod results_outbox;
mod security;
mod service_lifecycle;
