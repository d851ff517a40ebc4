//! The typed configuration after validation and layering.
//!
//! These are what every program works with; nobody downstream sees the raw dialect. The
//! resolved [`Service`] is also what the renderer writes into a run directory's
//! `settings.json` for the buddy, so it (de)serialises in plain snake_case JSON.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// A service id: `name` or `package::name`.
///
/// Each part is 1-64 characters of `[A-Za-z0-9_.@+-]`, not starting with `.` or `-`. The id is
/// used verbatim as the run directory's name: the charset makes it safe (no `/`, no NUL, never
/// `.` or `..`, no leading dash), and `::` is an ordinary file-name sequence on Linux.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceId {
    package: Option<String>,
    name: String,
}

impl ServiceId {
    /// Parses and checks an id; the error says what is wrong in one sentence.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (package, name) = match s.split_once("::") {
            Some((p, n)) => (Some(p), n),
            None => (None, s),
        };
        if let Some(p) = package {
            check_part(p, "package")?;
        }
        check_part(name, "name")?;
        Ok(ServiceId {
            package: package.map(str::to_owned),
            name: name.to_owned(),
        })
    }
    /// The package part, if the id has one.
    pub fn package(&self) -> Option<&str> {
        self.package.as_deref()
    }
    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn check_part(part: &str, what: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_.@+-".contains(c);
    if part.is_empty() || part.len() > 64 {
        return Err(format!("the {what} must be 1 to 64 characters long"));
    }
    if let Some(c) = part.chars().find(|&c| !ok_char(c)) {
        return Err(format!(
            "the {what} {part:?} contains {c:?}; only letters, digits and _.@+- are allowed"
        ));
    }
    if part.starts_with('.') || part.starts_with('-') {
        return Err(format!(
            "the {what} {part:?} must not start with '.' or '-'"
        ));
    }
    Ok(())
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.package {
            Some(p) => write!(f, "{p}::{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl TryFrom<String> for ServiceId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ServiceId::parse(&s)
    }
}

impl From<ServiceId> for String {
    fn from(id: ServiceId) -> String {
        id.to_string()
    }
}

/// A user or group given by number or by name (`SetUID`, `SetGID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdSpec {
    /// A numeric id.
    Id(u32),
    /// A name, resolved with the system's user or group database when the service starts.
    Name(String),
}

impl Default for IdSpec {
    fn default() -> Self {
        IdSpec::Id(0)
    }
}

/// The state a newly configured service is put in (`InitialState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    /// Configured but not started.
    #[default]
    Stopped,
    /// Started as soon as it is configured (and its prerequisites run).
    Running,
}

/// One service after layering and validation. Field docs give each key's meaning; the seed's
/// sample configuration is the reference, `docs/configuration.md` the long form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// `name` or `package::name`.
    pub id: ServiceId,
    /// What this service provides for ordering (its name, package and UUID are implied).
    pub provides: Vec<String>,
    /// A UUID; `None` means "generate one once and keep it" (the controller's store does).
    pub uuid: Option<String>,
    /// One line for listings.
    pub short_description: Option<String>,
    /// Free text.
    pub long_description: Option<String>,
    /// Provides-names, `package:name` or `uuid#...` that must run first.
    pub prerequisites: Vec<String>,
    /// Lower starts first among services whose prerequisites are met.
    pub start_priority: i64,
    /// Seconds from a stop request to SIGKILL of the process group; negative: never SIGKILL.
    pub kill_timeout: f64,
    /// Consecutive failures after which the service is `failed`; negative: restart forever.
    pub max_consecutive_failures: i64,
    /// At most this many automatic restarts within `user_restart_window`.
    pub user_max_restarts: Option<u32>,
    /// The window, in seconds, for `user_max_restarts`; also the "stable uptime" that resets
    /// the failure counters.
    pub user_restart_window: Option<f64>,
    /// Seconds to wait after a death before restarting; `None`: at least 1 s between starts.
    pub user_rate_limit: Option<f64>,
    /// Add a random jitter of up to half the delay to each restart delay.
    pub randomize_rate_limit: bool,
    /// Run the service as this user (only when the buddy runs as root).
    pub set_uid: IdSpec,
    /// Run the service with this group (only when the buddy runs as root).
    pub set_gid: IdSpec,
    /// Event records the buddy keeps while nobody acknowledges them (at least 2).
    pub ringbuffer_size: u32,
    /// Tries to reach the controller when the buddy must phone home; negative: forever.
    pub reconnect_retries: i64,
    /// The command `%(EXEC_START)` stands for.
    pub exec_start: Option<String>,
    /// The start script after substitution; must `exec` the daemon.
    pub start_script: String,
    /// The command `%(EXEC_STOP)` stands for.
    pub exec_stop: Option<String>,
    /// The stop script after substitution; `$1` is the service's pid.
    pub stop_script: String,
    /// The command `%(EXEC_RELOAD)` stands for.
    pub exec_reload: Option<String>,
    /// The reload script after substitution; `$1` is the service's pid.
    pub reload_script: String,
    /// Custom actions in the order written, numbered 01.. in that order (at most 32).
    pub custom_actions: Vec<CustomAction>,
    /// A script that reads the service's stdout on its stdin (a logger).
    pub pipe_stdout_script: Option<String>,
    /// A script that reads the service's stderr on its stdin.
    pub pipe_stderr_script: Option<String>,
    /// Where stdout goes (or the stdout logger's stdout); `None`: `log/stdout`.
    pub redirect_stdout: Option<PathBuf>,
    /// Where stderr goes (or the stderr logger's stderr); `None`: `log/stderr`.
    pub redirect_stderr: Option<PathBuf>,
    /// State of a newly configured service.
    pub initial_state: InitialState,
    /// Unconfigure the service when its file disappears.
    pub unconfigure_on_file_removal: bool,
    /// On controller restart, trust a buddy that says "stopped" over the store.
    pub prefer_buddy_state_for_stopped: bool,
    /// On controller restart, trust a buddy that says "running" over the store.
    pub prefer_buddy_state_for_running: bool,
    /// A probe run by the buddy every `health_interval` while the service runs; exit 0 is
    /// healthy.
    pub health_check: Option<String>,
    /// Seconds between the end of one probe and the start of the next.
    pub health_interval: f64,
    /// Seconds a probe may take; then its process group is killed and it counts as failed.
    pub health_timeout: f64,
    /// Seconds after a start during which failed probes do not count.
    pub health_start_period: f64,
    /// Failed probes in a row that make the service unhealthy.
    pub health_retries: u32,
    /// What an unhealthy service leads to.
    pub health_action: HealthAction,
    /// How the service says it is ready.
    pub readiness: Readiness,
    /// Seconds from the start to readiness before `ready_timeout` is recorded; `None`: never.
    pub ready_timeout: Option<f64>,
    /// Each consecutive failure multiplies the restart delay by this factor (1: constant).
    pub restart_backoff: f64,
    /// The restart delay, grown and jittered, never exceeds this many seconds (unless the base
    /// delay does).
    pub restart_delay_max: f64,
    /// Seconds after giving up before the buddy tries again; `None`: `failed` until a command.
    pub failed_retry_after: Option<f64>,
    /// Notification hooks (ServiceDefaults' and the entry's, merged by name).
    pub notify: Vec<Hook>,
    /// The service's working directory (and its scripts').
    #[serde(default = "root_dir")]
    pub working_directory: PathBuf,
    /// Variables set over the clean base environment, in order.
    #[serde(default)]
    pub environment: Vec<(String, String)>,
    /// `KEY=VALUE` lines read at each start, over `environment`; `optional`: a missing file
    /// is no error (written `-/path`, as systemd does).
    #[serde(default)]
    pub environment_file: Option<EnvFile>,
    /// `LimitNOFILE`: open files.
    #[serde(default)]
    pub limit_nofile: Option<RlimitValue>,
    /// `LimitNPROC`: processes of the service's user.
    #[serde(default)]
    pub limit_nproc: Option<RlimitValue>,
    /// `LimitCORE`: core file size, bytes.
    #[serde(default)]
    pub limit_core: Option<RlimitValue>,
    /// `LimitAS`: address space, bytes.
    #[serde(default)]
    pub limit_as: Option<RlimitValue>,
    /// `LimitMEMLOCK`: locked memory, bytes.
    #[serde(default)]
    pub limit_memlock: Option<RlimitValue>,
    /// `LimitSTACK`: stack size, bytes.
    #[serde(default)]
    pub limit_stack: Option<RlimitValue>,
    /// `LimitCPU`: CPU time, seconds.
    #[serde(default)]
    pub limit_cpu: Option<RlimitValue>,
    /// `LimitFSIZE`: file size, bytes.
    #[serde(default)]
    pub limit_fsize: Option<RlimitValue>,
    /// Scheduling priority, -20 to 19.
    #[serde(default)]
    pub nice: Option<i32>,
    /// The I/O scheduling class.
    #[serde(default)]
    pub io_scheduling_class: Option<IoClass>,
    /// The I/O priority within its class, 0 (highest) to 7 (best effort's default is 4).
    #[serde(default)]
    pub io_scheduling_priority: Option<u8>,
    /// `/proc/PID/oom_score_adj`, -1000 to 1000.
    #[serde(default)]
    pub oom_score_adjust: Option<i32>,
    /// The file-mode creation mask.
    #[serde(default)]
    pub umask: Option<u32>,
    /// `PR_SET_NO_NEW_PRIVS`: neither it nor its children gain privileges by exec.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// `MemoryMax`, bytes (`u64::MAX`: unlimited): past it the OOM killer ends a process.
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// `MemoryHigh`, bytes: past it the service is throttled and reclaimed (cgroup v2 only).
    #[serde(default)]
    pub memory_high: Option<u64>,
    /// `CPUWeight`, 1 to 10000 (100 is everyone's default).
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// `CPUQuota`, percent of one CPU (200 is two CPUs).
    #[serde(default)]
    pub cpu_quota: Option<f64>,
    /// `TasksMax`: processes and threads (`u64::MAX`: unlimited).
    #[serde(default)]
    pub tasks_max: Option<u64>,
    /// `LogMaxSize`, bytes: the buddy's own logger writes each redirect file and rotates it
    /// past this size (a stream with a Pipe*Script keeps its script).
    #[serde(default)]
    pub log_max_size: Option<u64>,
    /// `LogKeep`: rotated files kept (`FILE.1` newest to `FILE.N`).
    #[serde(default = "ten")]
    pub log_keep: u32,
    /// `LogTimestamps`: the buddy's logger begins each line with its UTC time.
    #[serde(default)]
    pub log_timestamps: bool,
}

fn ten() -> u32 {
    10
}

fn root_dir() -> PathBuf {
    PathBuf::from("/")
}

impl Service {
    /// The resource limits it sets, in key order.
    pub fn rlimits(&self) -> Vec<(Rlimit, RlimitValue)> {
        let all = [
            self.limit_nofile,
            self.limit_nproc,
            self.limit_core,
            self.limit_as,
            self.limit_memlock,
            self.limit_stack,
            self.limit_cpu,
            self.limit_fsize,
        ];
        Rlimit::ALL
            .into_iter()
            .zip(all)
            .filter_map(|(r, v)| Some((r, v?)))
            .collect()
    }

    /// True when a cgroup controller's limit is set.
    pub fn has_cgroup_limits(&self) -> bool {
        self.memory_max.is_some()
            || self.memory_high.is_some()
            || self.cpu_weight.is_some()
            || self.cpu_quota.is_some()
            || self.tasks_max.is_some()
    }
}

/// `EnvironmentFile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvFile {
    /// An absolute path.
    pub path: PathBuf,
    /// A missing file is no error.
    pub optional: bool,
}

/// The resource limits a service key can set, named as systemd's `Limit*` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rlimit {
    /// `LimitNOFILE`: open files.
    Nofile,
    /// `LimitNPROC`: processes of the user.
    Nproc,
    /// `LimitCORE`: core file size, bytes.
    Core,
    /// `LimitAS`: address space, bytes.
    As,
    /// `LimitMEMLOCK`: locked memory, bytes.
    Memlock,
    /// `LimitSTACK`: stack size, bytes.
    Stack,
    /// `LimitCPU`: CPU time, seconds.
    Cpu,
    /// `LimitFSIZE`: file size, bytes.
    Fsize,
}

impl Rlimit {
    /// Every one, in key order.
    pub const ALL: [Rlimit; 8] = [
        Rlimit::Nofile,
        Rlimit::Nproc,
        Rlimit::Core,
        Rlimit::As,
        Rlimit::Memlock,
        Rlimit::Stack,
        Rlimit::Cpu,
        Rlimit::Fsize,
    ];

    /// Its service key.
    pub fn key(self) -> &'static str {
        match self {
            Rlimit::Nofile => "LimitNOFILE",
            Rlimit::Nproc => "LimitNPROC",
            Rlimit::Core => "LimitCORE",
            Rlimit::As => "LimitAS",
            Rlimit::Memlock => "LimitMEMLOCK",
            Rlimit::Stack => "LimitSTACK",
            Rlimit::Cpu => "LimitCPU",
            Rlimit::Fsize => "LimitFSIZE",
        }
    }

    /// Its line in `/proc/PID/limits`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Rlimit::Nofile => "Max open files",
            Rlimit::Nproc => "Max processes",
            Rlimit::Core => "Max core file size",
            Rlimit::As => "Max address space",
            Rlimit::Memlock => "Max locked memory",
            Rlimit::Stack => "Max stack size",
            Rlimit::Cpu => "Max cpu time",
            Rlimit::Fsize => "Max file size",
        }
    }
}

/// A soft and a hard limit; `u64::MAX` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitValue {
    /// The soft limit.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// An I/O scheduling class (`IOSchedulingClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoClass {
    /// Real time (root only).
    Realtime,
    /// Best effort, the kernel's default.
    BestEffort,
    /// Only when the disk is otherwise idle.
    Idle,
}

/// What an unhealthy service leads to (`HealthAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthAction {
    /// Restart it (stop, then start; counted as a failure by the restart policy).
    #[default]
    Restart,
    /// Only record it and notify.
    Record,
}

/// How a service says it is ready (`Readiness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// It is ready when it runs; it never enters the `ready` state.
    #[default]
    None,
    /// s6 style: it writes a newline to this file descriptor.
    Fd(u32),
    /// systemd style: it sends `READY=1` to the datagram socket named by `NOTIFY_SOCKET`.
    Notify,
    /// Its first successful health check.
    Health,
}

/// The events a notification hook can be run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookEvent {
    /// The service died (or could not start) while wanted up: a failure.
    Failed,
    /// The restart policy gave up (MaxConsecutiveFailures).
    GaveUp,
    /// Health checks failed HealthRetries times in a row.
    Unhealthy,
    /// Healthy again after unhealthy, or running stably again after failures.
    Recovered,
    /// UserMaxRestarts were used up within the window: restarts paused.
    Flapping,
    /// A run began: the service was started or restarted (only when `On` names it: not in
    /// the default [`HookEvent::ALL`]).
    Started,
}

impl HookEvent {
    /// A hook's default `On`: the events that say something went wrong or right again.
    pub const ALL: [HookEvent; 5] = [
        HookEvent::Failed,
        HookEvent::GaveUp,
        HookEvent::Unhealthy,
        HookEvent::Recovered,
        HookEvent::Flapping,
    ];
    /// Every event `On` may name, in the order documented.
    pub const KNOWN: [HookEvent; 6] = [
        HookEvent::Failed,
        HookEvent::GaveUp,
        HookEvent::Unhealthy,
        HookEvent::Recovered,
        HookEvent::Flapping,
        HookEvent::Started,
    ];
    /// The name used in configuration and in `UPK_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Failed => "failed",
            HookEvent::GaveUp => "gave_up",
            HookEvent::Unhealthy => "unhealthy",
            HookEvent::Recovered => "recovered",
            HookEvent::Flapping => "flapping",
            HookEvent::Started => "started",
        }
    }
}

/// A notification hook (`Notify: { name: { Run, On, Timeout } }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    /// The hook's name; its script is rendered as `scripts/hook@<name>`.
    pub name: String,
    /// The script; `None` (written `Null`) removes a hook of the same name from a lower layer.
    pub run: Option<String>,
    /// The events it runs on.
    pub on: Vec<HookEvent>,
    /// Seconds it may run; then its process group is killed.
    pub timeout: f64,
}

/// A named custom action and its script (after substitution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomAction {
    /// The name clients use; the run directory also numbers it (`actions/01`).
    pub name: String,
    /// The script body.
    pub script: String,
}

/// Most custom actions a service may have (the seed's `actions/01` .. `actions/32`).
pub const MAX_CUSTOM_ACTIONS: usize = 32;

/// The controller file (`upkeeper.conf`) after validation, with every path made effective.
#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    /// Variable state: the audit store, the controller socket.
    pub state_dir: PathBuf,
    /// Where service files (`*.conf`, `*.json5`) live.
    pub svc_config_path: PathBuf,
    /// Where run directories are rendered.
    pub svc_run_path: PathBuf,
    /// The buddy executable.
    pub upk_buddy_path: PathBuf,
    /// Seconds between acknowledgement batches to buddies (fractional).
    pub buddy_polling_interval: f64,
    /// Members of this group (and root, and the controller's own user) may control services.
    pub control_group: Option<u32>,
    /// Members of this group may read status and history and subscribe.
    pub read_group: Option<u32>,
    /// Events, commands and configuration changes older than this many days are deleted.
    pub history_max_age_days: Option<f64>,
    /// At most this many rows are kept per history table (the newest).
    pub history_max_events: Option<u64>,
    /// Where the controller serves Prometheus metrics (`GET /metrics`); `None`: it does not.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Services' cgroups are made under this path (relative to the controller's own cgroup
    /// in each hierarchy); `None`: no cgroups, process groups only.
    pub cgroup: Option<String>,
    /// Service keys applied under every service entry.
    pub service_defaults: super::ServiceLayer,
}

impl Controller {
    /// The controller's client socket, `StateDir/upkeeper.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("upkeeper.sock")
    }
}
