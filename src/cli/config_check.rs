//! `qubs-bridge config check [FILE]`: validate without starting anything;
//! `qubs-bridge config defaults`: every setting's built-in default, as TOML.

use std::io::Write;
use std::path::PathBuf;

use super::output;
use crate::config::Settings;

pub fn run(file: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(file.as_deref())?;
    let secret_source = if settings.qubs.client_secret_file.is_some() {
        "file"
    } else {
        "inline/environment"
    };
    // Reading the secret file now catches a missing or empty one before start-up does.
    settings.client_secret()?;
    let mut out = output::stdout();
    writeln!(
        out,
        "configuration OK{}",
        file.map(|f| format!(": {}", f.display()))
            .unwrap_or_default()
    )?;
    writeln!(out, "  qubs.base_url   {}", settings.qubs.base_url())?;
    writeln!(out, "  qubs.token_url  {}", settings.qubs.token_url())?;
    writeln!(out, "  qubs.client_id  {}", settings.qubs.client_id)?;
    writeln!(out, "  client secret   set ({secret_source})")?;
    writeln!(
        out,
        "  qubs.domains    {}",
        settings.qubs.domains.join(", ")
    )?;
    match &settings.store.url {
        None => writeln!(
            out,
            "  store           sqlite {}",
            settings.store.path.display()
        )?,
        Some(url) => writeln!(
            out,
            "  store           postgresql {} (lease {} s)",
            crate::store::redact_url(url),
            settings.store.lease_secs
        )?,
    }
    writeln!(
        out,
        "  admin / gRPC / MLLP  {} / {} / {}",
        settings.server.admin_listen,
        settings.server.grpc_listen,
        if settings.mllp.enabled {
            settings.mllp.listen.to_string()
        } else {
            "off".to_string()
        }
    )?;
    Ok(())
}

/// Prints the built-in defaults as TOML.
pub fn defaults() -> anyhow::Result<()> {
    let mut out = output::stdout();
    writeln!(
        out,
        "# qubs-bridge's built-in defaults. Required: qubs.base_url, qubs.token_url and the client\n# secret (QUBS_BRIDGE__QUBS__CLIENT_SECRET). See README.md, \"Configuration reference\".\n"
    )?;
    write!(out, "{}", crate::config::defaults_toml())?;
    Ok(())
}
