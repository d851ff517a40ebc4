//! `upk_buddy RUN-DIR`: see the library for what it does.

use std::process::ExitCode;

const USAGE: &str = "usage: upk_buddy RUN-DIR\n\nSupervises the service rendered in RUN-DIR (see docs/servicedir.md).";

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
        _ => {
            eprintln!("{USAGE}");
            upk_core::exit::PERMANENT
        }
    };
    ExitCode::from(code as u8)
}
