//! `qubs-bridge config check [FILE]`: validate without starting anything.

use std::path::PathBuf;

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
    println!(
        "configuration OK{}",
        file.map(|f| format!(": {}", f.display()))
            .unwrap_or_default()
    );
    println!("  qubs.base_url   {}", settings.qubs.base_url());
    println!("  qubs.token_url  {}", settings.qubs.token_url());
    println!("  qubs.client_id  {}", settings.qubs.client_id);
    println!("  client secret   set ({secret_source})");
    println!("  qubs.domains    {}", settings.qubs.domains.join(", "));
    println!(
        "  admin / gRPC / MLLP  {} / {} / {}",
        settings.server.admin_listen,
        settings.server.grpc_listen,
        if settings.mllp.enabled {
            settings.mllp.listen.to_string()
        } else {
            "off".to_string()
        }
    );
    Ok(())
}
