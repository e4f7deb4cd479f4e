//! `qubs-bridge simulator`: the embedded QUBS simulator on its own, with demo data, for
//! trying the bridge (or any other QUBS client) without a QUBS account.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use clap::Args;

use super::output;

use crate::config::LogFormat;
use crate::simulator::{ClientAuth, DEMO_CLIENT_ID, DEMO_DOMAIN, Simulator};

#[derive(Args)]
pub struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// Client secret to accept for the demo client (random when not given).
    #[arg(long, env = "QUBS_SIMULATOR_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Extra generated pending appointments (ids B0000000…), for load tests.
    #[arg(long, default_value_t = 0)]
    appointments: u32,
    /// Serve only what QUBS's documentation describes: no single-appointment GET, no sites
    /// or report-attachment endpoints, comments and attachments of pending appointments
    /// only, DynamoDB-style paging, token answers without expires_in.
    #[arg(long)]
    strict_docs: bool,
    /// How the token endpoint takes client credentials: `basic` (HTTP Basic only), `post`
    /// (form body only) or `either`.
    #[arg(long, value_enum, default_value = "either")]
    token_auth: TokenAuthArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TokenAuthArg {
    Either,
    Basic,
    Post,
}

pub async fn run(args: SimulatorArgs) -> anyhow::Result<()> {
    crate::telemetry::init(LogFormat::Pretty, "info");
    let sim = Simulator::demo();
    sim.add_bulk_appointments(args.appointments);
    sim.set_strict_docs(args.strict_docs);
    sim.set_client_auth(match args.token_auth {
        TokenAuthArg::Either => ClientAuth::Either,
        TokenAuthArg::Basic => ClientAuth::Basic,
        TokenAuthArg::Post => ClientAuth::Post,
    });
    if let Some(secret) = &args.client_secret {
        sim.add_client(DEMO_CLIENT_ID, secret, &[DEMO_DOMAIN]);
    }
    let shutdown = crate::shutdown::on_signal();
    let running = sim.start(SocketAddr::new(args.host, args.port)).await?;
    let secret_shown = match &args.client_secret {
        Some(_) => "(the one you gave)".to_string(),
        None => running
            .client(DEMO_CLIENT_ID)
            .map(|c| c.client_secret)
            .unwrap_or_default(),
    };
    let banner = (|| -> std::io::Result<()> {
        let mut out = output::stdout();
        writeln!(out, "QUBS simulator listening")?;
        writeln!(out, "  base URL       {}", running.base_url())?;
        writeln!(out, "  token URL      {}", running.token_url())?;
        writeln!(out, "  client id      {DEMO_CLIENT_ID}")?;
        writeln!(out, "  client secret  {secret_shown}")?;
        writeln!(out, "  domain         {DEMO_DOMAIN}")?;
        writeln!(
            out,
            "  request log    http://{}/_simulator/requests",
            running.addr
        )?;
        if args.strict_docs {
            // No sites endpoint: the bridge needs the zones from its configuration.
            writeln!(
                out,
                "  strict mode    only what QUBS documents; configure the site time zones:"
            )?;
            writeln!(out, "                 [qubs.site_time_zones]")?;
            for (site, zone) in running.site_time_zones(DEMO_DOMAIN) {
                writeln!(out, "                 \"{site}\" = \"{zone}\"")?;
            }
        }
        writeln!(
            out,
            "Point the bridge at it with QUBS_BRIDGE__QUBS__BASE_URL, __TOKEN_URL, __CLIENT_ID, __CLIENT_SECRET. Ctrl-C stops."
        )
    })();
    // Nobody reads the banner (stdout closed): stop, as any command does.
    if let Err(e) = banner {
        running.shutdown().await;
        return Err(e.into());
    }
    shutdown.cancelled().await;
    running.shutdown().await;
    Ok(())
}
