#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

// Requests allocate many small short-lived objects (parsed bodies, template
// values); mimalloc handles that pattern across threads much better than the
// system allocator (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    flowgate::cli::run(flowgate::cli::Cli::parse())
}
