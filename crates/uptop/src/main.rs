//! `uptop [--config FILE] [--socket PATH]`: the live view of an upkeeper controller
//! (docs/uptop.md). Exit codes: 0 after `q`, 1 when it cannot start or the terminal fails,
//! 128 + N after signal N, 101 after a panic.

use clap::{CommandFactory, Parser};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = uptop::Args::parse();
    if args.man {
        let mut out = std::io::stdout().lock();
        let page = upk_core::manpage::render(
            uptop::Args::command(),
            "1",
            upk_core::manpage::Subcommands::Here,
            uptop::manual::SECTIONS,
            &mut out,
        );
        return ExitCode::from(u8::from(page.is_err()));
    }
    match uptop::run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uptop: {e:#}");
            ExitCode::from(1)
        }
    }
}
