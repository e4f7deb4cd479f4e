//! Tests that read everything the bridge logs, with every level on: one process-wide
//! subscriber captures it (`common::logs::exclusive`), so these run one at a time and live
//! in their own binary, away from the other integration tests' logs.

#[path = "../it/common/mod.rs"]
mod common;

mod no_phi_in_feed_logs;
mod no_phi_in_logs;
mod no_phi_in_result_logs;
mod qubs_fallback_logs;
mod security_logs;
