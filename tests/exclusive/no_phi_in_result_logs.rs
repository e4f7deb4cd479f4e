//! PHI never reaches the logs on the results path: ORU^R01 over MLLP and gRPC, accepted,
//! refused, retried and dead-lettered, with every log level on.

use crate::common;

use std::time::Duration;

use common::{GRPC_TOKEN, authed, pending, start_bridge};
use qubs_bridge::grpc::pb::SubmitOruRequest;
use qubs_bridge::grpc::pb::result_service_client::ResultServiceClient;
use qubs_bridge::mllp::MllpClient;
use qubs_bridge::simulator::{Fault, FaultRule, Simulator};

const PATIENT: &str = "Wilhelmina Thistlewood";
const CLINICIAN: &str = "Ignatius Rookwood";
const TEXT: &str = "Cavernous haemangioma of the left hepatic lobe";

fn oru(control_id: &str, appointment: &str, status: &str, msh_tail: &str) -> String {
    [
        format!("MSH|^~\\&|RIS|HOSP|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|{control_id}|P|2.5.1{msh_tail}"),
        format!("PID|1||P1^^^acme^MR||{}||19440229|F", PATIENT.replace(' ', "^")),
        format!("ORC|RE|{appointment}"),
        format!("OBR|1|{appointment}||CT^CT|||20261127090000|||||||||||||||202611270930|||{status}|||||||99999&{}", CLINICIAN.replace(' ', "&")),
        format!("OBX|1|TX|||FINDINGS: {TEXT}.||||||F"),
        "NTE|1||Patient phone 0400 123 456".to_string(),
    ]
    .join("\r")
}

#[tokio::test]
async fn the_results_path_logs_no_phi() {
    let logs_turn = common::logs::exclusive("trace,h2=info,hyper=info,tower=info,rustls=info");
    let capture = &logs_turn.capture;

    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for id in ["A1", "A2", "A3"] {
        sim.put_appointment("acme", pending(id));
    }
    // More transient failures than one QUBS call retries: the outbox retries too.
    sim.add_fault(
        FaultRule::new(Fault::Status {
            status: 503,
            retry_after: None,
        })
        .method("POST")
        .path("/report")
        .times(10),
    );
    let bridge = start_bridge(
        sim,
        &[
            ("QUBS_BRIDGE__RESULTS__RETRY_INITIAL_MS", "20"),
            ("QUBS_BRIDGE__RESULTS__RETRY_MAX_MS", "50"),
            ("QUBS_BRIDGE__MLLP__MAX_FRAME_BYTES", "4096"),
        ],
    )
    .await;
    let mut mllp = MllpClient::connect(
        bridge.service.mllp_addr.unwrap(),
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let timeout = Duration::from_secs(20);
    let mut acks = Vec::new();
    for message in [
        oru("M1", "A1", "F", ""),
        oru("M1", "A1", "F", ""),         // retransmission
        oru("M2", "A1", "P", ""),         // preliminary after final
        oru("M3", "A404", "F", ""),       // unknown appointment
        oru("M4", "A2", "X", ""),         // unmapped status
        oru("M5", "A3", "F", "|||AL|AL"), // enhanced mode
        format!(
            "{}\rOBX|2|TX|||{}||||||F",
            oru("M6", "A2", "F", ""),
            TEXT.repeat(200)
        ), // too large
    ] {
        acks.push(mllp.call(message.as_bytes(), timeout).await.unwrap());
    }
    let _application_ack = mllp.recv(timeout).await.unwrap();
    let mut grpc = ResultServiceClient::new(bridge.channel().await);
    let answer = grpc
        .submit_oru(authed(
            SubmitOruRequest {
                message: oru("G1", "A2", "F", "").into_bytes(),
                domain: "acme".into(),
            },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.ack_code, "AA");

    let logs = capture.text();
    assert!(
        logs.contains("ORU^R01 accepted"),
        "result logs were captured"
    );
    assert!(logs.contains("ORU^R01 not accepted"));
    assert!(logs.contains("will retry"), "retries were logged");
    assert!(logs.contains("MLLP frame too large"));
    for s in [
        PATIENT,
        "Wilhelmina",
        "Thistlewood",
        CLINICIAN,
        "Rookwood",
        TEXT,
        "haemangioma",
        "19440229",
        "0400 123 456",
    ] {
        assert!(!logs.contains(s), "logged PHI: {s:?}");
    }
    // The ACKs themselves carry no PHI either (they go to operators' screens).
    for ack in acks {
        let ack = String::from_utf8_lossy(&ack);
        for s in [PATIENT, "Thistlewood", CLINICIAN, TEXT, "19440229"] {
            assert!(!ack.contains(s), "PHI in an ACK: {ack}");
        }
    }
}
