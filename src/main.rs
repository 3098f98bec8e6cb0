//! The `cartwheel` binary; see [`cartwheel::cli`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the node allocates and frees a message buffer per request; glibc's malloc spent a
/// fifth of the CPU of a 3-node benchmark on that (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cartwheel::cli::Cli::parse();
    let default_level = match cli.command {
        cartwheel::cli::Command::Serve { .. } | cartwheel::cli::Command::Up { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        cartwheel::cli::LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        cartwheel::cli::LogFormat::Json => logs.json().init(),
    }
    cartwheel::cli::run(cli)
}
