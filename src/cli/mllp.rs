//! `qubs-bridge mllp send`: sends HL7 v2 files over MLLP and prints each answer — for
//! trying the bridge's results listener (or any MLLP receiver) without another tool.
//! `qubs-bridge mllp listen`: a small MLLP receiver that prints and acknowledges what it
//! gets — for trying the order feed, or a consumer's set-up, the same way.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::exit::{Unreachable, usage};
use super::output::{self, Format, note};
use crate::hl7::ack::{self, AckCode, AckError, ErrorCode, IncomingHeader};
use crate::hl7::er7;
use crate::mllp::{
    ClientError, ClientTls, Connection, Handler, Inbound, MllpClient, MllpMetrics,
    MllpServerSettings,
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
        /// `text` (a line per file) or `json` (one object per file and line, ACKs included).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
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
        /// `text` (a line per message) or `json` (one object per message and line).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// MSA-1 and the ERR segment (empty when none) of an answer.
fn summary(ack: &[u8]) -> (String, String) {
    let text = er7::decode_bytes(ack);
    let segment = |id: &str| {
        text.split(['\r', '\n'])
            .find(|s| s.starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    let msa = segment("MSA");
    let code = msa.split('|').nth(1).unwrap_or("?").to_string();
    (code, segment("ERR"))
}

/// An MLLP failure with the exit status it deserves: a peer that is not there or does not
/// answer may be there later; a TLS set-up or a message it cannot carry will not change.
fn mllp_error(e: ClientError, doing: String) -> anyhow::Error {
    match e {
        ClientError::Tls(_) => usage(format!("{doing}: {e}")),
        ClientError::InvalidMessage | ClientError::OversizeReply { .. } => {
            anyhow::anyhow!("{doing}: {e}")
        }
        _ => anyhow::Error::new(Unreachable(format!("{doing}: {e}"))),
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
            format,
            files,
        } => {
            send(
                to,
                ca_cert,
                server_name,
                timeout_secs,
                application_ack_secs,
                show_ack,
                format,
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
            format,
        } => {
            listen(
                std::net::SocketAddr::new(host, port),
                print,
                &ack,
                count,
                format,
            )
            .await
        }
    }
}

/// Prints and acknowledges every message it receives. A message it cannot print (stdout
/// closed) is not acknowledged: the receiver stops and the sender keeps it.
struct Printer {
    print: bool,
    format: Format,
    code: AckCode,
    received: AtomicU64,
    count: u64,
    done: CancellationToken,
    /// Why printing stopped, for the command's end.
    failed: Mutex<Option<std::io::Error>>,
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
        if let Err(e) = self.show(n, &header, &text, code) {
            self.received.fetch_sub(1, AtomicOrdering::SeqCst);
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            self.done.cancel();
            return;
        }
        let reply = ack::build(&header, code, error.as_ref(), &now);
        let _ = conn.reply(reply.into_bytes()).await;
        if self.count > 0 && n >= self.count {
            self.done.cancel();
        }
    }
}

impl Printer {
    fn show(
        &self,
        n: u64,
        header: &IncomingHeader,
        text: &str,
        code: AckCode,
    ) -> std::io::Result<()> {
        let segment = |id: &str| {
            text.split(['\r', '\n'])
                .find(|s| s.starts_with(id))
                .unwrap_or_default()
                .to_string()
        };
        let orc = segment("ORC");
        let mut orc = orc.split(header.delimiters.field as char);
        let (control, placer) = (orc.nth(1).unwrap_or(""), orc.next().unwrap_or(""));
        let mut out = output::stdout();
        match self.format {
            Format::Text => {
                writeln!(
                    out,
                    "#{n:<5} {}^{}  MSH-10 {}  ORC-1 {}  ORC-2 {}  -> {}",
                    header.message_code,
                    header.trigger_event,
                    header.control_id.as_deref().unwrap_or("?"),
                    output::or_dash(control),
                    output::or_dash(placer),
                    code.as_str()
                )?;
                if self.print {
                    for s in text.split(['\r', '\n']).filter(|s| !s.is_empty()) {
                        writeln!(out, "    {s}")?;
                    }
                }
            }
            Format::Json => output::json_line(
                &mut out,
                &json!({
                    "n": n,
                    "messageType": format!("{}^{}", header.message_code, header.trigger_event),
                    "controlId": header.control_id,
                    "orderControl": control,
                    "placerOrder": placer,
                    "answered": code.as_str(),
                    "message": if self.print { Some(text) } else { None },
                }),
            )?,
        }
        out.flush()
    }
}

async fn listen(
    addr: std::net::SocketAddr,
    print: bool,
    ack: &str,
    count: u64,
    format: Format,
) -> anyhow::Result<()> {
    let code = match ack {
        "AE" => AckCode::AE,
        "AR" => AckCode::AR,
        _ => AckCode::AA,
    };
    let done = CancellationToken::new();
    let printer = Arc::new(Printer {
        print,
        format,
        code,
        received: AtomicU64::new(0),
        count,
        done: done.clone(),
        failed: Mutex::new(None),
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
    .map_err(|e| usage(format!("cannot listen on {addr}: {e}")))?;
    // Status lines go to stderr: stdout carries only the messages.
    note!(
        "MLLP receiver listening on {} (answering {ack}); Ctrl-C stops",
        server.addr
    );
    let stop = done.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let _ = server.task.await;
    if let Some(e) = printer
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e.into());
    }
    note!(
        "{} message(s) received",
        printer.received.load(AtomicOrdering::SeqCst)
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn send(
    to: String,
    ca_cert: Option<PathBuf>,
    server_name: Option<String>,
    timeout_secs: u64,
    application_ack_secs: u64,
    show_ack: bool,
    format: Format,
    files: Vec<PathBuf>,
) -> anyhow::Result<()> {
    // Every file is read before anything is sent: a typo in the last name sends nothing.
    let messages = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| usage(format!("{}: {e}", f.display()))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = match &ca_cert {
        Some(ca) => {
            let host = server_name
                .clone()
                .unwrap_or_else(|| to.rsplit_once(':').map_or(&*to, |(h, _)| h).to_string());
            Some(
                ClientTls::from_pem_files(ca, None, &host)
                    .map_err(|e| usage(format!("--ca-cert {}: {e}", ca.display())))?,
            )
        }
        None => None,
    };
    let mut client = MllpClient::connect(to.as_str(), tls.as_ref(), Duration::from_secs(10))
        .await
        .map_err(|e| mllp_error(e, format!("cannot connect to the MLLP receiver at {to}")))?;
    let timeout = Duration::from_secs(timeout_secs);
    let mut out = output::stdout();
    let mut refused = 0;
    for (file, message) in files.iter().zip(messages) {
        // Files often end lines with LF; MLLP receivers take any line ending.
        let ack = client
            .call(&message, timeout)
            .await
            .map_err(|e| mllp_error(e, format!("sending {}", file.display())))?;
        let (code, err) = summary(&ack);
        if code != "AA" && code != "CA" {
            refused += 1;
        }
        let second = if application_ack_secs > 0 {
            Some(client.recv(Duration::from_secs(application_ack_secs)).await)
        } else {
            None
        };
        match format {
            Format::Text => {
                // As `oru submit`: code, file, then what the answer says.
                let mut line = format!("{} {}", output::ack_code(&code), file.display());
                if !err.is_empty() {
                    line.push_str(&format!("  {err}"));
                }
                writeln!(out, "{line}")?;
                if show_ack {
                    writeln!(
                        out,
                        "{}",
                        output::segments_per_line(&er7::decode_bytes(&ack))
                    )?;
                }
                match &second {
                    Some(Ok(second)) => {
                        let (code, err) = summary(second);
                        writeln!(out, "    application ACK: {code}  {err}")?;
                        if show_ack {
                            writeln!(
                                out,
                                "{}",
                                output::segments_per_line(&er7::decode_bytes(second))
                            )?;
                        }
                    }
                    Some(Err(e)) => writeln!(out, "    no application ACK: {e}")?,
                    None => {}
                }
            }
            Format::Json => {
                let application = match &second {
                    Some(Ok(second)) => {
                        let (code, err) = summary(second);
                        json!({"ackCode": code, "err": err, "ack": er7::decode_bytes(second)})
                    }
                    Some(Err(e)) => json!({"error": e.to_string()}),
                    None => serde_json::Value::Null,
                };
                output::json_line(
                    &mut out,
                    &json!({
                        "file": file.display().to_string(),
                        "ackCode": code,
                        "err": err,
                        "ack": er7::decode_bytes(&ack),
                        "applicationAck": application,
                    }),
                )?;
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
