//! `upk_buddy RUN-DIR` (and `upk_buddy --logger ...`, the built-in logger): see the library.

use std::process::ExitCode;

const USAGE: &str = "usage: upk_buddy RUN-DIR\n       upk_buddy --logger FILE MAX_SIZE KEEP 0|1\n\nSupervises the service rendered in RUN-DIR (see docs/servicedir.md); as --logger,\nwrites stdin to FILE, rotated past MAX_SIZE bytes, KEEP rotated files kept.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.as_slice() {
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            0
        }
        [flag] if flag == "--version" || flag == "-V" => {
            println!("upk_buddy {}", env!("CARGO_PKG_VERSION"));
            0
        }
        [dir] => upk_buddy::run(std::path::Path::new(dir)),
        [flag, rest @ ..] if flag == "--logger" => upk_buddy::rotate::run(rest),
        _ => {
            eprintln!("{USAGE}");
            upk_core::exit::PERMANENT
        }
    };
    ExitCode::from(code as u8)
}
