//! ORU^R01 over the service's MLLP listener: sloppy framing and separators, oversize
//! frames, and enhanced-mode acknowledgements on the same connection — against today's
//! simulator and the strict one.

use crate::common;

use std::time::Duration;

use common::{Mode, in_both_modes, with_pending};
use qubs_bridge::mllp::MllpClient;
use tokio::io::AsyncWriteExt;

in_both_modes!(
    lf_separators_a_bom_and_garbage_before_the_frame_are_tolerated,
    an_oversize_frame_is_rejected_with_its_control_id_and_the_connection_goes_on,
    enhanced_mode_sends_the_commit_ack_then_the_application_ack,
);

fn oru(control_id: &str, appointment: &str, msh_tail: &str, sep: &str) -> String {
    [
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1{msh_tail}"),
        "PID|1||P1^^^acme^MR".to_string(),
        format!("ORC|RE|{appointment}"),
        format!("OBR|1|{appointment}||CT^CT|||20261127090000|||||||||||||||202611270930|||F"),
        "OBX|1|TX|||IMPRESSION: Normal.||||||F".to_string(),
    ]
    .join(sep)
}

fn msa(ack: &[u8]) -> String {
    String::from_utf8_lossy(ack)
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .unwrap_or_default()
        .to_string()
}

async fn lf_separators_a_bom_and_garbage_before_the_frame_are_tolerated(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(2), &[]).await;
    let addr = bridge.service.mllp_addr.unwrap();
    let mut client = MllpClient::connect(addr, None, Duration::from_secs(5))
        .await
        .unwrap();
    let ack = client
        .call(
            oru("L1", "A0001", "", "\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(msa(&ack), "MSA|AA|L1");
    let with_bom = format!("\u{feff}{}", oru("L2", "A0002", "", "\r\n"));
    // Junk before the start byte, then the frame, in one write.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bytes = b"\r\n\r\nnoise".to_vec();
    bytes.push(0x0b);
    bytes.extend_from_slice(with_bom.as_bytes());
    bytes.extend_from_slice(&[0x1c, 0x0d]);
    raw.write_all(&bytes).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(&[0x1c, 0x0d]) {
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(n > 0, "closed without an ACK");
        reply.extend_from_slice(&buf[..n]);
    }
    assert_eq!(msa(&reply[1..reply.len() - 2]), "MSA|AA|L2");
    assert_eq!(bridge.sim.submissions("acme").len(), 2);
}

async fn an_oversize_frame_is_rejected_with_its_control_id_and_the_connection_goes_on(mode: Mode) {
    let bridge = mode
        .start_bridge(
            with_pending(1),
            &[("QUBS_BRIDGE__MLLP__MAX_FRAME_BYTES", "65536")],
        )
        .await;
    let addr = bridge.service.mllp_addr.unwrap();
    let mut client = MllpClient::connect(addr, None, Duration::from_secs(5))
        .await
        .unwrap();
    let mut big = oru("BIG1", "A0001", "", "\r");
    big.push_str(&format!("\rOBX|2|TX|||{}||||||F", "y".repeat(200_000)));
    let ack = client
        .call(big.as_bytes(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(msa(&ack), "MSA|AR|BIG1");
    assert!(
        String::from_utf8_lossy(&ack).contains("larger than this receiver takes (65536 bytes)")
    );
    let ack = client
        .call(
            oru("OK1", "A0001", "", "\r").as_bytes(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(msa(&ack), "MSA|AA|OK1");
}

async fn enhanced_mode_sends_the_commit_ack_then_the_application_ack(mode: Mode) {
    let bridge = mode.start_bridge(with_pending(1), &[]).await;
    let addr = bridge.service.mllp_addr.unwrap();
    let mut client = MllpClient::connect(addr, None, Duration::from_secs(5))
        .await
        .unwrap();
    let commit = client
        .call(
            oru("EN1", "A0001", "|||AL|AL", "\r").as_bytes(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(msa(&commit), "MSA|CA|EN1");
    let application = client.recv(Duration::from_secs(10)).await.unwrap();
    assert_eq!(msa(&application), "MSA|AA|EN1");
    // The sender's ACK of our application ACK is taken without an answer...
    client
        .send(b"MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093001||ACK^R01^ACK|X1|P|2.5.1\rMSA|CA|EN1")
        .await
        .unwrap();
    assert!(client.recv(Duration::from_millis(500)).await.is_err());
    // ...and MSH-15 NE / MSH-16 ER: no commit ACK, and no application ACK on success.
    client
        .send(oru("EN2", "A0001", "|||NE|ER", "\r").as_bytes())
        .await
        .unwrap();
    assert!(client.recv(Duration::from_millis(1500)).await.is_err());
    // MSH-16 ER and an error: the application ACK comes (AE); no commit ACK with SU.
    let mut client = MllpClient::connect(addr, None, Duration::from_secs(5))
        .await
        .unwrap();
    client
        .send(oru("EN3", "A0404", "|||SU|ER", "\r").as_bytes())
        .await
        .unwrap();
    let first = client.recv(Duration::from_secs(10)).await.unwrap();
    assert_eq!(msa(&first), "MSA|CA|EN3");
    let application = client.recv(Duration::from_secs(10)).await.unwrap();
    assert_eq!(msa(&application), "MSA|AE|EN3");
}
