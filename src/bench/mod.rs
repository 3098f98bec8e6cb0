//! # `cartwheel bench`: the latency benchmark (being built; see docs/BENCHMARKS.md)

use std::process::ExitCode;

/// Arguments of `cartwheel bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Run the benchmark.
pub fn run(_args: BenchArgs) -> ExitCode {
    eprintln!("cartwheel bench is not part of this build yet");
    ExitCode::from(crate::cli::EXIT_FAILED)
}
