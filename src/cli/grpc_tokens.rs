//! `qubs-bridge grpc new-token|hash-token`: make bearer tokens for gRPC callers.

use std::io::{BufRead, Write};

use clap::Subcommand;

use super::exit::usage;
use super::output;

use crate::grpc::auth::{hash_token, new_token};

#[derive(Subcommand)]
pub enum GrpcCommand {
    /// Make a random token; prints it (give it to the caller) and its hash (for the config).
    NewToken {
        /// The caller's name in the configuration.
        #[arg(long, default_value = "engine")]
        name: String,
    },
    /// Print the SHA-256 of a token read from standard input.
    HashToken,
}

pub fn run(command: GrpcCommand) -> anyhow::Result<()> {
    let mut out = output::stdout();
    match command {
        GrpcCommand::NewToken { name } => {
            let token = new_token();
            writeln!(
                out,
                "token (give to the caller, store nowhere else): {token}"
            )?;
            writeln!(out)?;
            writeln!(out, "[[grpc.clients]]")?;
            writeln!(out, "name = \"{name}\"")?;
            writeln!(out, "token_sha256 = \"{}\"", hash_token(&token))?;
            writeln!(out, "domains = [\"acme\"]")?;
        }
        GrpcCommand::HashToken => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let token = line.trim_end_matches(['\r', '\n']);
            if token.is_empty() {
                return Err(usage("no token on standard input"));
            }
            writeln!(out, "{}", hash_token(token))?;
        }
    }
    Ok(())
}
