//! How a command ends: its exit status, and its error said once on stderr.
//!
//! Scripts tell a retryable failure from a wrong command by the status alone:
//! [`EXIT_CODES`] is the one list `--help`, the man page and README show.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use crate::config::ConfigError;

/// The operation failed (a refused message, a failed golden case, an unknown appointment...).
pub const FAILED: u8 = 1;
/// Usage or configuration: the command line, a config file, a token, an unreadable input.
pub const USAGE: u8 = 2;
/// Something to reach was unavailable: the bridge, QUBS behind it, an MLLP peer, or no
/// answer in time. Trying again later may succeed (`EX_UNAVAILABLE` of sysexits.h).
pub const UNAVAILABLE: u8 = 69;

/// Every exit status and its meaning, for `--help`, the man page and README.
pub const EXIT_CODES: [(u8, &str); 4] = [
    (
        0,
        "success (also when stdout was closed early, as by `| head`)",
    ),
    (FAILED, "the operation failed"),
    (
        USAGE,
        "usage or configuration error (command line, config file, token, input files)",
    ),
    (
        UNAVAILABLE,
        "the bridge, QUBS or an MLLP peer could not be reached or did not answer in time: retry later",
    ),
];

/// `--help`'s closing section: the exit statuses and the environment that changes output.
pub fn after_help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in EXIT_CODES {
        text.push_str(&format!("  {code:<3} {meaning}\n"));
    }
    text.push_str(
        "\nOutput: records go to stdout (text, or `--format json`: one JSON object per line); \
         notes, progress and errors go to stderr. Colour only on a terminal; NO_COLOR=1 turns \
         it off, CLICOLOR_FORCE=1 on.\n",
    );
    text
}

/// A wrong command that clap could not catch (a missing choice between two options...).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// Something the command needed to reach was not there (connection refused, timed out...).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The exit status an error deserves.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ConfigError>() || cause.is::<UsageError>() {
            return USAGE;
        }
        if cause.is::<Unreachable>()
            || matches!(
                cause.downcast_ref::<crate::store::StoreError>(),
                Some(crate::store::StoreError::Unavailable(_))
            )
        {
            return UNAVAILABLE;
        }
        if let Some(call) = cause.downcast_ref::<super::connect::CallFailed>() {
            return match call.0.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => UNAVAILABLE,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => USAGE,
                _ => FAILED,
            };
        }
    }
    FAILED
}

/// Whether the error is a write to a stdout whose reader went away (`| head`).
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A safety net under the rule that commands write through `output` and return write errors:
/// a `print!` anywhere (a new command, a library) that meets a closed stdout panics with
/// "failed printing to stdout"; that panic ends the command as [`finish`] would, quietly with
/// status 0. Every other panic keeps the default report.
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The error and its causes on one line, each said once: a cause whose text its parent
/// already shows (many libraries print their source inside their own message) is left out.
pub fn render(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || parts.iter().any(|p| p.contains(text)) {
            continue;
        }
        parts.push(text.to_string());
    }
    parts.join(": ")
}

/// Ends the command: prints the error (once) and picks the exit status. A closed stdout
/// ends it quietly with status 0, as the reader wanted no more.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if is_closed_stdout(&e) {
        return ExitCode::SUCCESS;
    }
    let style = anstyle::Style::new()
        .bold()
        .fg_color(Some(anstyle::AnsiColor::Red.into()));
    let mut stderr = anstream::stderr();
    let _ = writeln!(stderr, "{style}error:{style:#} {}", render(&e));
    ExitCode::from(code_for(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wraps(
        &'static str,
        Option<Box<dyn std::error::Error + Send + Sync>>,
    );
    impl fmt::Display for Wraps {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        // The shape of a refused TCP connect through tonic and hyper: two layers with the
        // same text, one that repeats its source.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let inner = Wraps("tcp connect error", Some(Box::new(io)));
        let outer = Wraps("tcp connect error", Some(Box::new(inner)));
        let e = anyhow::Error::new(Wraps("transport error", Some(Box::new(outer))))
            .context("cannot connect to the bridge at http://127.0.0.1:1");
        assert_eq!(
            render(&e),
            "cannot connect to the bridge at http://127.0.0.1:1: transport error: tcp connect error: Connection refused"
        );
        let e = anyhow::anyhow!("reading x: No such file").context("reading x: No such file");
        assert_eq!(render(&e), "reading x: No such file");
    }

    #[test]
    fn statuses_follow_the_kind_of_failure() {
        assert_eq!(code_for(&usage("give ids or --all-dead")), USAGE);
        assert_eq!(
            code_for(&anyhow::Error::new(Unreachable("x".into())).context("y")),
            UNAVAILABLE
        );
        assert_eq!(code_for(&anyhow::anyhow!("golden cases failed")), FAILED);
        let call = |code| {
            anyhow::Error::new(super::super::connect::CallFailed(tonic::Status::new(
                code, "m",
            )))
        };
        assert_eq!(code_for(&call(tonic::Code::Unavailable)), UNAVAILABLE);
        assert_eq!(code_for(&call(tonic::Code::Unauthenticated)), USAGE);
        assert_eq!(code_for(&call(tonic::Code::NotFound)), FAILED);
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_closed_stdout(
            &anyhow::Error::new(pipe).context("printing")
        ));
    }
}
