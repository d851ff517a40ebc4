//! `upkctl openrc start|stop`: the Rust half of the OpenRC supervisor glue.
//!
//! The shell half (`openrc/upkeeper.sh`, installed as `PREFIX/lib/upkeeper/openrc.sh`) only
//! splits the command line and passes the OpenRC variables on; everything with a rule in it is
//! here. An OpenRC service `SVC` becomes the upkeeper service `openrc::SVC` (package `openrc`,
//! so it never collides with an upkeeper.d service), defined in `SvcConfigPath/openrc-SVC.conf`.
//!
//! Two jobs, two modules. [`map`] turns the variables into the text of that file: a pure
//! function (validation, quoting, the mapping of respawn, stop and health-check settings),
//! unit-tested without a controller. [`run`] does the rest: [`start`] writes the file
//! atomically and only when it changed, waits until the controller has taken it into use,
//! starts the service through the controller (relayed and audited like any `upkctl start`) and
//! waits until it runs, then writes OpenRC's daemon record, whose pidfile is the buddy's
//! `buddy.pid`, so OpenRC sees `crashed` when the buddy dies.
//!
//! [`stop`] must work at shutdown, after init has killed the controller: it goes through the
//! controller when it answers, and otherwise to the service's buddy directly
//! ([`libupkeeper::buddy`]), and when no buddy is left either it stops a service process that
//! is still running itself (`upk_core::escalate`, the same policy as a buddy's stop). The file
//! stays after a stop (the service's history and a fast next start); `InitialState: "stopped"`
//! keeps it stopped whenever a controller reads it anew.

pub mod map;
pub mod run;

pub use map::{
    captured_env, notify, parse_duration, quote, service_file, service_id, stop_plan, StopPlan,
    Surroundings,
};
pub use run::{start, stop};
