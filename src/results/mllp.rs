//! ORU^R01 results over MLLP: every frame is handed to [`Results::submit_oru`] and
//! answered on the same connection — the ACK (original mode), or the commit ACK now and the
//! application ACK once the reports settle (enhanced mode).

use std::sync::Arc;
use std::time::Duration;

use crate::hl7::ack::{self, AckCode, AckError, ErrorCode, IncomingHeader};
use crate::hl7::er7;
use crate::mllp::{Connection, Handler, Inbound};

use super::Results;

/// How often a pending application ACK checks that its connection is still open.
const APPLICATION_ACK_POLL: Duration = Duration::from_secs(5);

pub struct OruOverMllp {
    pub results: Arc<Results>,
    /// The QUBS domain results on this listener belong to (MLLP carries none).
    pub domain: String,
    /// The largest frame, for the message of the AR an oversize frame gets.
    pub max_frame_bytes: usize,
}

impl Handler for OruOverMllp {
    async fn handle(&self, inbound: Inbound, conn: &Connection) {
        let reply = match inbound {
            Inbound::TooLarge { head, size } => {
                let header = IncomingHeader::recover(&er7::decode_bytes(&head));
                tracing::warn!(
                    connection = conn.id(),
                    peer = %conn.peer(),
                    bytes = size,
                    msh10 = header.control_id.as_deref().unwrap_or("-"),
                    "MLLP frame too large; rejected"
                );
                let error = AckError {
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    text: format!(
                        "message of {size} bytes is larger than this receiver takes ({} bytes)",
                        self.max_frame_bytes
                    ),
                };
                let code = super::code_for(&header, AckCode::AR);
                ack::build(&header, code, Some(&error), &jiff::ZonedDateTime::now())
            }
            Inbound::Message(bytes) => {
                let header = IncomingHeader::recover(&er7::decode_bytes(&bytes));
                if header.message_code.eq_ignore_ascii_case("ACK") {
                    // The sender acknowledging one of our application ACKs: nothing to answer.
                    tracing::debug!(connection = conn.id(), "ACK received from the sender");
                    return;
                }
                let outcome = self.results.submit_oru(&self.domain, &bytes).await;
                if let Some(ids) = outcome.application_ack_for.clone() {
                    let (results, conn, header) =
                        (self.results.clone(), conn.clone(), outcome.header.clone());
                    tokio::spawn(async move {
                        send_application_ack(&results, &conn, &header, &ids).await
                    });
                }
                if !outcome.send_ack {
                    return;
                }
                outcome.ack.text
            }
        };
        if conn.reply(reply).await.is_err() {
            tracing::warn!(
                connection = conn.id(),
                peer = %conn.peer(),
                "MLLP connection closed before the ACK could be sent"
            );
        }
    }
}

/// Enhanced mode: waits (while the connection is open) for the reports to settle, then
/// sends the application ACK if MSH-16 wants it.
async fn send_application_ack(
    results: &Results,
    conn: &Connection,
    header: &IncomingHeader,
    ids: &[i64],
) {
    for id in ids {
        while results
            .outbox
            .wait_settled(*id, APPLICATION_ACK_POLL)
            .await
            .is_none()
        {
            if conn.is_closed() {
                tracing::info!(
                    connection = conn.id(),
                    msh10 = header.control_id.as_deref().unwrap_or("-"),
                    "connection closed before the application ACK; the result is still submitted"
                );
                return;
            }
        }
    }
    if let Some(ack) = results.application_ack(header, ids, Duration::ZERO).await
        && conn.reply(ack.text).await.is_err()
    {
        tracing::info!(
            connection = conn.id(),
            "connection closed before the application ACK could be sent"
        );
    }
}
