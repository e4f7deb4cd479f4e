//! The `qubs-bridge` command line: one file per subcommand, plus how every command prints
//! (`output`) and ends (`exit`: exit statuses, errors said once, a closed stdout taken
//! quietly).

mod completions;
mod config_check;
mod connect;
pub mod exit;
mod feed;
mod grpc_tokens;
mod mappings;
mod mllp;
mod orders;
mod outbox;
mod output;
mod results;
mod serve;
mod simulator;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qubs-bridge",
    version,
    about = "Bridge between the QUBS radiology API and hospital interface engines (gRPC, HL7 v2 over MLLP, FHIR R4)",
    after_help = exit::after_help(),
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(serve::ServeArgs),
    /// Run the embedded QUBS simulator alone, with its demo data.
    Simulator(simulator::SimulatorArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read orders from a running bridge (gRPC client).
    Orders {
        #[command(flatten)]
        connection: connect::Connection,
        #[command(subcommand)]
        command: orders::OrdersCommand,
    },
    /// gRPC caller tokens.
    #[command(subcommand)]
    Grpc(grpc_tokens::GrpcCommand),
    /// MLLP tools: send HL7 v2 files to a receiver, or receive and print messages.
    #[command(subcommand)]
    Mllp(mllp::MllpCommand),
    /// Send ORU^R01 results to a running bridge (gRPC client).
    Oru {
        #[command(flatten)]
        connection: connect::Connection,
        #[command(subcommand)]
        command: results::OruCommand,
    },
    /// Send a report to a running bridge (gRPC client).
    Report {
        #[command(flatten)]
        connection: connect::Connection,
        #[command(subcommand)]
        command: results::ReportCommand,
    },
    /// Inspect and manage the durable outbox of inbound results of a running bridge.
    Outbox {
        #[command(flatten)]
        connection: connect::Connection,
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
    /// The HL7 order feed of a running bridge: destination queues, watches, events.
    Feed {
        #[command(flatten)]
        connection: connect::Connection,
        #[command(subcommand)]
        command: feed::FeedCommand,
    },
    /// The store: create or upgrade its schema, check replicas and leaders, copy an
    /// embedded store into PostgreSQL.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Check mapping files and run their golden cases.
    #[command(subcommand)]
    Mappings(mappings::MappingsCommand),
    /// Run one input through one mapping: the output on stdout, unmapped values and unread
    /// fields on stderr.
    Map(mappings::MapArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff), or write one per command into a directory.
    Man(completions::ManArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with the current environment overrides).
    Check {
        /// The TOML file; only defaults and the environment when omitted.
        file: Option<PathBuf>,
    },
    /// Print the built-in defaults of every setting, as TOML (a starting point for a file).
    Defaults,
}

/// The command-line definition, for the completion scripts and manual pages built from it.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    exit::quiet_on_closed_stdout();
    // Usage errors exit 2 here (clap), `--help` and `--version` 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return exit::finish(Err(
                anyhow::Error::new(e).context("cannot start the async runtime")
            ));
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Simulator(args) => simulator::run(args).await,
            Command::Config(ConfigCommand::Check { file }) => config_check::run(file),
            Command::Config(ConfigCommand::Defaults) => config_check::defaults(),
            Command::Orders {
                connection,
                command,
            } => orders::run(&connection, command).await,
            Command::Grpc(command) => grpc_tokens::run(command),
            Command::Mllp(command) => mllp::run(command).await,
            Command::Mappings(command) => mappings::run(command),
            Command::Oru {
                connection,
                command,
            } => results::oru(&connection, command).await,
            Command::Report {
                connection,
                command,
            } => results::report(&connection, command).await,
            Command::Outbox {
                connection,
                command,
            } => outbox::run(&connection, command).await,
            Command::Feed {
                connection,
                command,
            } => feed::run(&connection, command).await,
            Command::Store(command) => store::run(command).await,
            Command::Map(args) => mappings::map(args),
            Command::Completions(args) => completions::completions(args),
            Command::Man(args) => completions::man(args),
        }
    });
    exit::finish(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::command().debug_assert();
    }
}
