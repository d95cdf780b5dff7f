#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    flowgate::cli::run(flowgate::cli::Cli::parse())
}
