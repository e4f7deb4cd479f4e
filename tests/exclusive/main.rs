//! Tests that need the process to themselves: those that read everything the bridge logs
//! through one process-wide subscriber, and the bad-input sweep, which counts panics on every
//! thread and measures the process's peak memory. Each takes its turn
//! (`common::logs::exclusive`), so they run one at a time, in their own binary.

#[path = "../it/common/mod.rs"]
mod common;

mod bad_input;
mod no_phi_in_console_logs;
mod no_phi_in_feed_logs;
mod no_phi_in_inbound_reader_logs;
mod no_phi_in_logs;
mod no_phi_in_result_logs;
mod qubs_fallback_logs;
mod security_logs;
