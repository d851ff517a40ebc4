//! `upkctl`: parse the command line, run the command, turn the outcome into an exit code.
//! Everything else lives in the library.

use clap::CommandFactory;
use std::process::ExitCode;
use upkctl::exit;

// As installed (static musl), musl's allocator hands memory back at once: about 60 mmap and
// munmap pairs while clap builds the command line, 0.7 ms of a command's 1.2 ms of CPU.
// dlmalloc keeps what it was given (docs/benchmarks.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> ExitCode {
    // `COMPLETE=bash upkctl` prints the shell's registration; the shell then asks here, with
    // COMPLETE set, for each completion (service names included): answered, and exited.
    clap_complete::CompleteEnv::with_factory(upkctl::cli::Args::command).complete();
    // Usage errors are permanent failures (100), as for every upkeeper program; help is not.
    let args = match upkctl::cli::Args::parse_argv(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE as u8 } else { 0 });
        }
    };
    let mut stdout = std::io::stdout().lock();
    let code = match upkctl::run(args, &mut stdout) {
        Ok(code) => code,
        Err(f) => {
            if !f.message.is_empty() {
                upkctl::warn(&f.message);
            }
            f.code
        }
    };
    ExitCode::from(code as u8)
}
