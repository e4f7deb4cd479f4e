//! HL7 v2 over MLLP (the Minimal Lower Layer Protocol): a listener, a client and the codec.
//!
//! ## Framing
//!
//! A frame is `0x0B <payload> 0x1C 0x0D`. The payload is passed on untouched, whatever its
//! segment separators (CR, LF or CRLF). The decoder ([`MllpCodec`]) is lenient where real
//! senders are sloppy and strict where leniency would be ambiguous:
//!
//! - bytes outside a frame are skipped and counted as garbage (logged and counted, never
//!   shown);
//! - a `0x0B` inside a frame starts the frame again (the partial frame becomes garbage);
//! - only `0x1C 0x0D` ends a frame; a `0x1C` followed by anything else is payload;
//! - a frame longer than [`MllpServerSettings::max_frame_bytes`] is not buffered: the
//!   handler gets [`Inbound::TooLarge`] with the first [`codec::HEAD_BYTES`] (enough to
//!   read MSH-10 and answer AR) and the total size, and the connection carries on;
//! - a connection closed mid-frame drops the partial frame; the handler never sees it.
//!
//! ## Timeouts
//!
//! - `idle_timeout_secs`: no frame started for this long (garbage does not count) closes
//!   the connection;
//! - `frame_timeout_secs`: a frame started but not finished within this time (a slow or
//!   stuck sender) closes the connection; the same limit bounds the TLS handshake and the
//!   writing of each batch of replies (a peer that does not read its ACKs).
//!
//! ## Ordering
//!
//! Frames of one connection are handled strictly in order: the server awaits
//! [`Handler::handle`] for frame N before it decodes frame N+1, so a slow handler slows
//! that sender down (TCP back-pressure) and nobody else. Connections run concurrently, up
//! to `max_connections`. Replies ([`Connection::reply`]) are written in the order they are
//! queued; a handler may keep a clone of its [`Connection`] to send a later reply (HL7
//! enhanced mode: commit ACK at once, application ACK later) for as long as the connection
//! is open.

pub mod client;
pub mod codec;
pub mod server;

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::tls::TlsSettings;

pub use client::{ClientError, ClientTls, MllpClient};
pub use codec::{CodecError, Inbound, MllpCodec};
pub use server::{Connection, Handler, MllpServer, ReplyError, ServerError, serve, start};

/// The MLLP listener's settings. Every field has a default, so an empty section is valid.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MllpServerSettings {
    /// Whether the service runs the ORU^R01 listener.
    pub enabled: bool,
    /// The QUBS domain results on this listener belong to (MLLP carries none); may be left
    /// out when the bridge serves one domain.
    pub domain: Option<String>,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest payload accepted; larger frames reach the handler as [`Inbound::TooLarge`].
    pub max_frame_bytes: usize,
    /// Close a connection on which no frame started for this long.
    pub idle_timeout_secs: u64,
    /// Close a connection whose frame is not complete this long after it started; also
    /// bounds the TLS handshake and each write of replies.
    pub frame_timeout_secs: u64,
    /// Connections beyond this are accepted and closed at once (with a warning).
    pub max_connections: usize,
    /// On shutdown, how long in-flight handlers may take before their connections are cut.
    pub shutdown_grace_secs: u64,
    /// TLS, and mutual TLS when `client_ca_file` is set.
    pub tls: Option<TlsSettings>,
}

impl Default for MllpServerSettings {
    fn default() -> Self {
        MllpServerSettings {
            enabled: true,
            domain: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 2575)),
            max_frame_bytes: 16 * 1024 * 1024,
            idle_timeout_secs: 300,
            frame_timeout_secs: 30,
            max_connections: 512,
            shutdown_grace_secs: 10,
            tls: None,
        }
    }
}

/// A setting that is out of range; `key` is the field name within the MLLP section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct SettingsError {
    pub key: &'static str,
    pub reason: String,
}

impl MllpServerSettings {
    /// Checks ranges (not files: TLS files are read when the server starts).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |key, reason: &str| {
            Err(SettingsError {
                key,
                reason: reason.to_string(),
            })
        };
        if !(1024..=1 << 30).contains(&self.max_frame_bytes) {
            return err("max_frame_bytes", "must be between 1024 and 1073741824");
        }
        if self.idle_timeout_secs == 0 {
            return err("idle_timeout_secs", "must be at least 1");
        }
        if self.frame_timeout_secs == 0 {
            return err("frame_timeout_secs", "must be at least 1");
        }
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// `idle`, `frame`, `handshake` or `write`.
    pub kind: &'static str,
}

/// Counters of the MLLP listener; no labels carry message data.
#[derive(Debug, Default)]
pub struct MllpMetrics {
    pub connections_open: Gauge,
    pub connections: Counter,
    /// Connections closed at once because `max_connections` were open.
    pub connections_rejected: Counter,
    /// Frames handed to the handler (oversize ones included).
    pub frames: Counter,
    pub frames_too_large: Counter,
    /// Frames cut short by the peer closing the connection.
    pub frames_truncated: Counter,
    pub garbage_bytes: Counter,
    pub timeouts: Family<TimeoutLabels, Counter>,
}

impl MllpMetrics {
    /// Registers every metric (names start with `mllp_`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mllp_connections_open",
            "MLLP connections currently open",
            self.connections_open.clone(),
        );
        registry.register(
            "mllp_connections",
            "MLLP connections accepted",
            self.connections.clone(),
        );
        registry.register(
            "mllp_connections_rejected",
            "MLLP connections closed at once because max_connections were open",
            self.connections_rejected.clone(),
        );
        registry.register(
            "mllp_frames",
            "MLLP frames received (oversize ones included)",
            self.frames.clone(),
        );
        registry.register(
            "mllp_frames_too_large",
            "MLLP frames longer than max_frame_bytes",
            self.frames_too_large.clone(),
        );
        registry.register(
            "mllp_frames_truncated",
            "MLLP frames cut short by the peer closing the connection",
            self.frames_truncated.clone(),
        );
        registry.register(
            "mllp_garbage_bytes",
            "Bytes outside MLLP frames, skipped",
            self.garbage_bytes.clone(),
        );
        registry.register(
            "mllp_timeouts",
            "MLLP connections closed by a timeout, by kind (idle, frame, handshake, write)",
            self.timeouts.clone(),
        );
    }

    pub(crate) fn timeout(&self, kind: &'static str) {
        self.timeouts.get_or_create(&TimeoutLabels { kind }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_takes_defaults() {
        let s: MllpServerSettings = toml::from_str("").unwrap();
        assert_eq!(s.listen, "127.0.0.1:2575".parse().unwrap());
        assert_eq!(s.max_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(s.idle_timeout_secs, 300);
        assert_eq!(s.frame_timeout_secs, 30);
        assert_eq!(s.max_connections, 512);
        assert!(s.tls.is_none());
        s.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<MllpServerSettings>("max_frame = 1").is_err());
        assert!(toml::from_str::<MllpServerSettings>("listen = \"nowhere\"").is_err());
        let s: MllpServerSettings = toml::from_str(
            "listen = \"0.0.0.0:2576\"\nmax_frame_bytes = 100\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"",
        )
        .unwrap();
        assert_eq!(s.validate().unwrap_err().key, "max_frame_bytes");
        assert!(s.tls.is_some());
    }

    #[test]
    fn metrics_register_and_encode() {
        let m = MllpMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.frames.inc();
        m.timeout("idle");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("mllp_frames_total 1"), "{out}");
        assert!(
            out.contains("mllp_timeouts_total{kind=\"idle\"} 1"),
            "{out}"
        );
    }
}
