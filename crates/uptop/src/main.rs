//! `uptop [--config FILE] [--socket PATH]`: the live view of an upkeeper controller
//! (docs/uptop.md). Exit codes: 0 after `q`, 1 when it cannot start or the terminal fails,
//! 128 + N after signal N, 101 after a panic.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = uptop::Args::parse();
    match uptop::run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uptop: {e:#}");
            ExitCode::from(1)
        }
    }
}
