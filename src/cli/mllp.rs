//! `qubs-bridge mllp send`: sends HL7 v2 files over MLLP and prints each answer — for
//! trying the bridge's results listener (or any MLLP receiver) without another tool.
//! `qubs-bridge mllp listen`: a small MLLP receiver that prints and acknowledges what it
//! gets — for trying the order feed, or a consumer's set-up, the same way.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use tokio_util::sync::CancellationToken;

use crate::hl7::ack::{self, AckCode, AckError, ErrorCode, IncomingHeader};
use crate::hl7::er7;
use crate::mllp::{
    ClientTls, Connection, Handler, Inbound, MllpClient, MllpMetrics, MllpServerSettings,
};

#[derive(Subcommand)]
pub enum MllpCommand {
    /// Send ER7 files (one message each) and print the ACK code of each answer.
    Send {
        /// The receiver, e.g. the bridge's `mllp.listen`.
        #[arg(long, default_value = "127.0.0.1:2575")]
        to: String,
        /// CA certificate (PEM) when the receiver uses TLS.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Server name to check in the receiver's certificate (default: the host of --to).
        #[arg(long, requires = "ca_cert")]
        server_name: Option<String>,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// Also wait this many seconds for a second answer (the application ACK of
        /// enhanced mode).
        #[arg(long, default_value_t = 0)]
        application_ack_secs: u64,
        /// Print the whole ACK messages.
        #[arg(long)]
        show_ack: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Receive messages over MLLP, acknowledge each, and print a line per message (the
    /// whole message with --print: that shows patient data on the terminal).
    Listen {
        /// Port to listen on (0: any free port, printed at start).
        #[arg(long, default_value_t = 2576)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Print each message in full, one segment per line.
        #[arg(long)]
        print: bool,
        /// The acknowledgement code to answer with: AA, AE or AR (to try a sender's
        /// policies).
        #[arg(long, default_value = "AA", value_parser = ["AA", "AE", "AR"])]
        ack: String,
        /// Stop after this many messages (0: run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

fn describe(ack: &[u8]) -> String {
    let text = er7::decode_bytes(ack);
    let segment = |id: &str| {
        text.split(['\r', '\n'])
            .find(|s| s.starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    let msa = segment("MSA");
    let code = msa.split('|').nth(1).unwrap_or("?").to_string();
    let err = segment("ERR");
    if err.is_empty() {
        code
    } else {
        format!("{code}  {err}")
    }
}

pub async fn run(command: MllpCommand) -> anyhow::Result<()> {
    match command {
        MllpCommand::Send {
            to,
            ca_cert,
            server_name,
            timeout_secs,
            application_ack_secs,
            show_ack,
            files,
        } => {
            send(
                to,
                ca_cert,
                server_name,
                timeout_secs,
                application_ack_secs,
                show_ack,
                files,
            )
            .await
        }
        MllpCommand::Listen {
            port,
            host,
            print,
            ack,
            count,
        } => listen(std::net::SocketAddr::new(host, port), print, &ack, count).await,
    }
}

/// Prints and acknowledges every message it receives.
struct Printer {
    print: bool,
    code: AckCode,
    received: AtomicU64,
    count: u64,
    done: CancellationToken,
}

impl Handler for Printer {
    async fn handle(&self, inbound: Inbound, conn: &Connection) {
        let now = jiff::ZonedDateTime::now();
        let (text, code, error) = match inbound {
            Inbound::Message(bytes) => (er7::decode_bytes(&bytes).into_owned(), self.code, None),
            Inbound::TooLarge { head, size, .. } => {
                let error = AckError {
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    text: format!("message of {size} bytes is larger than this receiver takes"),
                };
                (
                    er7::decode_bytes(&head).into_owned(),
                    AckCode::AR,
                    Some(error),
                )
            }
        };
        let header = IncomingHeader::recover(&text);
        let n = self.received.fetch_add(1, AtomicOrdering::SeqCst) + 1;
        let segment = |id: &str| {
            text.split(['\r', '\n'])
                .find(|s| s.starts_with(id))
                .unwrap_or_default()
                .to_string()
        };
        let orc = segment("ORC");
        let mut orc = orc.split(header.delimiters.field as char);
        let (control, placer) = (orc.nth(1).unwrap_or(""), orc.next().unwrap_or(""));
        println!(
            "#{n:<5} {}^{}  MSH-10 {}  ORC-1 {}  ORC-2 {}  -> {}",
            header.message_code,
            header.trigger_event,
            header.control_id.as_deref().unwrap_or("?"),
            if control.is_empty() { "-" } else { control },
            if placer.is_empty() { "-" } else { placer },
            code.as_str()
        );
        if self.print {
            for s in text.split(['\r', '\n']).filter(|s| !s.is_empty()) {
                println!("    {s}");
            }
        }
        let reply = ack::build(&header, code, error.as_ref(), &now);
        let _ = conn.reply(reply.into_bytes()).await;
        if self.count > 0 && n >= self.count {
            self.done.cancel();
        }
    }
}

async fn listen(
    addr: std::net::SocketAddr,
    print: bool,
    ack: &str,
    count: u64,
) -> anyhow::Result<()> {
    let code = match ack {
        "AE" => AckCode::AE,
        "AR" => AckCode::AR,
        _ => AckCode::AA,
    };
    let done = CancellationToken::new();
    let printer = Arc::new(Printer {
        print,
        code,
        received: AtomicU64::new(0),
        count,
        done: done.clone(),
    });
    let settings = MllpServerSettings {
        listen: addr,
        ..Default::default()
    };
    let server = crate::mllp::start(
        &settings,
        printer.clone(),
        Arc::new(MllpMetrics::default()),
        done.clone(),
    )
    .await
    .with_context(|| format!("listening on {addr}"))?;
    println!(
        "MLLP receiver listening on {} (answering {ack}); Ctrl-C stops",
        server.addr
    );
    let stop = done.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let _ = server.task.await;
    println!(
        "{} message(s) received",
        printer.received.load(AtomicOrdering::SeqCst)
    );
    Ok(())
}

async fn send(
    to: String,
    ca_cert: Option<PathBuf>,
    server_name: Option<String>,
    timeout_secs: u64,
    application_ack_secs: u64,
    show_ack: bool,
    files: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let tls = match &ca_cert {
        Some(ca) => {
            let host = server_name
                .clone()
                .unwrap_or_else(|| to.rsplit_once(':').map_or(&*to, |(h, _)| h).to_string());
            Some(ClientTls::from_pem_files(ca, None, &host)?)
        }
        None => None,
    };
    let mut client = MllpClient::connect(to.as_str(), tls.as_ref(), Duration::from_secs(10))
        .await
        .with_context(|| format!("connecting to {to}"))?;
    let timeout = Duration::from_secs(timeout_secs);
    let mut refused = 0;
    for file in &files {
        let message = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        // Files often end lines with LF; MLLP receivers take any line ending.
        let ack = client
            .call(&message, timeout)
            .await
            .with_context(|| format!("sending {}", file.display()))?;
        let summary = describe(&ack);
        if !(summary.starts_with("AA") || summary.starts_with("CA")) {
            refused += 1;
        }
        println!("{:<3} {}", summary, file.display());
        if show_ack {
            println!("{}", er7::decode_bytes(&ack).replace('\r', "\n"));
        }
        if application_ack_secs > 0 {
            match client.recv(Duration::from_secs(application_ack_secs)).await {
                Ok(second) => {
                    println!("    application ACK: {}", describe(&second));
                    if show_ack {
                        println!("{}", er7::decode_bytes(&second).replace('\r', "\n"));
                    }
                }
                Err(e) => println!("    no application ACK: {e}"),
            }
        }
    }
    anyhow::ensure!(
        refused == 0,
        "{refused} of {} message(s) not accepted",
        files.len()
    );
    Ok(())
}
