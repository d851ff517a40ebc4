//! `upkeeper-ship`: parse the command line, run the command, turn the outcome into an exit
//! code. Everything else lives in the library.

use clap::Parser;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;
use upk_core::exit;
use upkeeper_ship::cli::{Args, Cmd, Query, Question, Run};
use upkeeper_ship::{host, query, say, ship};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::PERMANENT as u8
            } else {
                0
            });
        }
    };
    let code = match args.command {
        Cmd::Run(run) => ship_run(&run),
        Cmd::Query(q) => ship_query(&q),
    };
    ExitCode::from(code as u8)
}

/// The connection string (`--database`, else `UPKEEPER_SHIP_DATABASE`) as a config, with the
/// shipper's defaults for what it leaves unsaid.
fn database(url: Option<&str>) -> Result<postgres::Config, String> {
    let env = std::env::var("UPKEEPER_SHIP_DATABASE").ok();
    let url = url
        .or(env.as_deref())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            "no fleet database: pass --database URL or set UPKEEPER_SHIP_DATABASE".to_owned()
        })?;
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| format!("--database is not a PostgreSQL connection string: {e}"))?;
    if config.get_application_name().is_none() {
        config.application_name("upkeeper-ship");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // A server that vanished without closing the connection (a cut cable) is noticed.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

fn ship_run(run: &Run) -> i32 {
    let prepared = database(run.database.as_deref()).and_then(|database| {
        let host = host::resolve(run.host.as_deref(), &run.store)?;
        Ok(ship::Options {
            store: run.store.clone(),
            database,
            host,
            batch: run.batch as usize,
            interval: run.interval(),
            backoff_max: run.backoff_max(),
            once: run.once,
            verbose: run.verbose,
        })
    });
    let opts = match prepared {
        Ok(o) => o,
        Err(e) => {
            say(&e);
            return exit::PERMANENT;
        }
    };
    say(&format!(
        "shipping {} as host {:?}",
        opts.store.display(),
        opts.host.host
    ));
    match ship::run(&opts) {
        Ok(()) => exit::OK,
        Err(e) => {
            say(&format!("{e:#}"));
            exit::TEMPORARY
        }
    }
}

fn ship_query(q: &Query) -> i32 {
    let config = match database(q.database.as_deref()) {
        Ok(mut c) => {
            let secs = u64::from(q.timeout);
            c.connect_timeout(Duration::from_secs(secs));
            let bound = format!("-c statement_timeout={}", secs.saturating_mul(1000));
            let options = match c.get_options() {
                Some(o) => format!("{o} {bound}"),
                None => bound,
            };
            c.options(&options);
            c
        }
        Err(e) => {
            say(&e);
            return exit::PERMANENT;
        }
    };
    let mut client = match config.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("cannot reach the fleet database: {e}"));
            return exit::TEMPORARY;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = (|| -> anyhow::Result<()> {
        let mut time = |t: &Option<String>| {
            t.as_deref()
                .map(|t| query::resolve_time(&mut client, t))
                .transpose()
        };
        let since_us = time(&q.since)?;
        let until_us = time(&q.until)?;
        let mut filter = query::Filter {
            hosts: q.hosts.clone(),
            service: "*".into(),
            since_us,
            until_us,
            kinds: Vec::new(),
            limit: query::MAX_ROWS,
        };
        match &q.what {
            Question::History {
                service,
                kind,
                limit,
            } => {
                filter.service = service.clone();
                filter.kinds = kind.clone();
                filter.limit = i64::from(*limit);
                query::history(&mut client, &filter, &mut out)
            }
            Question::Stats { service } => {
                filter.service = service.clone();
                query::stats(&mut client, &filter, &mut out)
            }
            Question::Why { service, at } => {
                let at_us = at
                    .as_deref()
                    .map(|t| query::resolve_time(&mut client, t))
                    .transpose()?;
                filter.service = service.clone();
                query::why(&mut client, &filter, at_us, &mut out)
            }
            Question::Incident => query::incident(&mut client, &filter, &mut out),
        }
    })();
    use std::io::Write;
    match result.and_then(|()| out.flush().map_err(Into::into)) {
        Ok(()) => exit::OK,
        Err(e) => {
            say(&format!("{e:#}"));
            exit::TEMPORARY
        }
    }
}
