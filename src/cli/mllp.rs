//! `qubs-bridge mllp send`: sends HL7 v2 files over MLLP and prints each answer — for
//! trying the bridge's results listener (or any MLLP receiver) without another tool.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use crate::hl7::er7;
use crate::mllp::{ClientTls, MllpClient};

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
    let MllpCommand::Send {
        to,
        ca_cert,
        server_name,
        timeout_secs,
        application_ack_secs,
        show_ack,
        files,
    } = command;
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
