//! `qubs-bridge grpc new-token|hash-token`: make bearer tokens for gRPC callers.

use std::io::BufRead;

use clap::Subcommand;

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
    match command {
        GrpcCommand::NewToken { name } => {
            let token = new_token();
            println!("token (give to the caller, store nowhere else): {token}");
            println!();
            println!("[[grpc.clients]]");
            println!("name = \"{name}\"");
            println!("token_sha256 = \"{}\"", hash_token(&token));
            println!("domains = [\"acme\"]");
        }
        GrpcCommand::HashToken => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let token = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!token.is_empty(), "no token on standard input");
            println!("{}", hash_token(token));
        }
    }
    Ok(())
}
