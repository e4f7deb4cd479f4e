//! `qubs-bridge serve [--config FILE] [--demo]`: run the service.
//!
//! `--demo` starts the embedded QUBS simulator with its demo data on a free loopback port
//! and points the service at it, so the bridge runs with nothing else installed.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

use super::output;

use crate::config::{GrpcClient, Settings};
use crate::simulator::{DEMO_CLIENT_ID, DEMO_DOMAIN, Simulator};
use crate::{grpc, service, shutdown, telemetry};

/// The gRPC bearer token `serve --demo` accepts.
pub const DEMO_GRPC_TOKEN: &str = "demo-token";

/// Where `serve --demo` sends its order feed (`qubs-bridge mllp listen`'s default port).
pub const DEMO_FEED_PORT: u16 = 2576;

#[derive(Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); environment variables QUBS_BRIDGE__* override it.
    #[arg(long, short, env = "QUBS_BRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Run against the embedded QUBS simulator with demo data.
    #[arg(long)]
    demo: bool,
    /// With --demo: where the demo's order feed sends ORM^O01 (by default, where
    /// `qubs-bridge mllp listen` listens).
    #[arg(long, requires = "demo", default_value_t = format!("127.0.0.1:{DEMO_FEED_PORT}"))]
    feed_to: String,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::load_unchecked(args.config.as_deref(), std::env::vars())?;
    let simulator = if args.demo {
        let sim = Simulator::demo();
        // A fixed demo secret may be chosen (as for `qubs-bridge simulator`); random otherwise.
        if let Ok(secret) = std::env::var("QUBS_SIMULATOR_CLIENT_SECRET") {
            sim.add_client(DEMO_CLIENT_ID, &secret, &[DEMO_DOMAIN]);
        }
        let running = sim.start(([127, 0, 0, 1], 0).into()).await?;
        let creds = running
            .client(DEMO_CLIENT_ID)
            .expect("the demo simulator registers its client");
        settings.qubs.base_url = Some(running.base_url());
        settings.qubs.token_url = Some(running.token_url());
        settings.qubs.client_id = creds.client_id;
        settings.qubs.client_secret = Some(SecretString::from(creds.client_secret));
        settings.qubs.client_secret_file = None;
        settings.qubs.domains = vec![DEMO_DOMAIN.to_string()];
        // The simulator forgets everything on exit; so does the demo's store.
        settings.store.path = std::env::temp_dir()
            .join(format!("qubs-bridge-demo-{}", std::process::id()))
            .join("bridge.db");
        // A well-known token for the demo's gRPC API (demo data only, loopback only).
        settings.grpc.clients.push(GrpcClient {
            name: "demo".into(),
            token_sha256: Some(grpc::auth::hash_token(DEMO_GRPC_TOKEN)),
            certificate_cn: None,
            domains: vec![DEMO_DOMAIN.to_string()],
        });
        // The same token signs in to the web console, with every role.
        settings.console.users.push(crate::console::ConsoleUser {
            name: "demo".into(),
            token_sha256: Some(grpc::auth::hash_token(DEMO_GRPC_TOKEN)),
            roles: vec![
                crate::console::Role::Viewer,
                crate::console::Role::Analyst,
                crate::console::Role::Operator,
            ],
            domains: Vec::new(),
        });
        // The order feed to `qubs-bridge mllp listen` (port 2576): until the listener runs,
        // the messages wait in the destination's queue. A config file's [feed] wins.
        if !settings.feed.enabled && settings.feed.destinations.is_empty() {
            settings.feed.enabled = true;
            settings.feed.poll_interval_secs = 10;
            // A reported order leaves the worklist: consumers get ORC-1 CA for it.
            settings.feed.on_removed = crate::feed::OnRemoved::Send;
            settings
                .feed
                .destinations
                .push(crate::feed::DestinationSettings {
                    name: "demo-listener".into(),
                    address: Some(args.feed_to.clone()),
                    retry_max_ms: 5000,
                    ..Default::default()
                });
        }
        Some(running)
    } else {
        None
    };
    settings.validate()?;
    telemetry::init(
        settings.telemetry.log_format,
        &settings.telemetry.log_filter,
    );

    let shutdown = shutdown::on_signal();
    let running = service::start(&settings, shutdown.clone()).await?;
    let banner = print_banner(&settings, simulator.as_ref(), &running);
    if banner.is_err() {
        // Nobody reads stdout any more (`serve | head`): stop as a signal would, in-flight
        // work first, and end quietly like any command whose stdout closed.
        shutdown.cancel();
    }
    tracing::info!(domains = ?settings.qubs.domains, "qubs-bridge started");
    running.wait().await;
    if let Some(sim) = simulator {
        sim.shutdown().await;
        if let Some(dir) = settings.store.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    tracing::info!("qubs-bridge stopped");
    banner.map_err(Into::into)
}

/// The console's address for a browser: `localhost` for a loopback listener, since
/// browsers keep the console's Secure cookie over plain HTTP only there.
fn console_url(admin: std::net::SocketAddr) -> String {
    if admin.ip().is_loopback() || admin.ip().is_unspecified() {
        format!("http://localhost:{}/console/", admin.port())
    } else {
        format!("http://{admin}/console/")
    }
}

/// Where everything listens, on stdout.
fn print_banner(
    settings: &Settings,
    simulator: Option<&crate::simulator::RunningSimulator>,
    running: &service::RunningService,
) -> std::io::Result<()> {
    let mut out = output::stdout();
    if let Some(sim) = simulator {
        writeln!(
            out,
            "qubs-bridge demo: embedded QUBS simulator at {} (domain {DEMO_DOMAIN})",
            sim.base_url()
        )?;
        writeln!(
            out,
            "qubs-bridge demo: gRPC token `{DEMO_GRPC_TOKEN}` (export QUBS_BRIDGE_TOKEN={DEMO_GRPC_TOKEN})"
        )?;
    }
    writeln!(out, "qubs-bridge gRPC API on {}", running.grpc_addr)?;
    if let Some(addr) = running.mllp_addr {
        writeln!(
            out,
            "qubs-bridge MLLP listener for ORU^R01 results on {addr}"
        )?;
    }
    if settings.feed.enabled {
        for d in &settings.feed.destinations {
            writeln!(
                out,
                "qubs-bridge order feed: {} ({} {}), polling QUBS every {} s",
                d.name,
                d.kind.as_str(),
                d.target(),
                settings.feed.poll_interval_secs
            )?;
        }
    }
    writeln!(
        out,
        "qubs-bridge serving; admin endpoint http://{}/readyz",
        running.admin_addr
    )?;
    if settings.console.enabled {
        let url = console_url(running.admin_addr);
        if simulator.is_some() {
            writeln!(
                out,
                "qubs-bridge web console: {url} (sign in with the token `{DEMO_GRPC_TOKEN}`: every role)"
            )?;
        } else if settings.console.users.is_empty() {
            writeln!(
                out,
                "qubs-bridge web console: {url} (no [[console.users]] configured: nobody can sign in)"
            )?;
        } else {
            writeln!(out, "qubs-bridge web console: {url}")?;
        }
    }
    out.flush()
}
