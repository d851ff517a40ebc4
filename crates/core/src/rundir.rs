//! The run directory, `SvcRunPath/<id>/`: the on-disk API of one service.
//!
//! ```text
//! <id>/actions/{start,stop,reload,health,01..32}  symlinks to ../scripts/<name>
//! <id>/scripts/                            rendered scripts, mode 0755 (hooks: hook@<name>)
//! <id>/settings.json                       the effective settings the buddy runs by
//! <id>/log/{stdout,stderr,buddy}           output files (never deleted by rendering)
//! <id>/log/{stdout_pipe,stderr_pipe}       FIFOs feeding PipeStdoutScript/PipeStderrScript
//! <id>/log/{health,hooks}                  the last probe's output, hooks' output
//! <id>/notify.sock                         sd_notify socket (Readiness "notify")
//! <id>/buddy.sock                          the buddy's socket (mode 0600)
//! <id>/lock                                flock: one buddy per directory
//! <id>/buddy.pid                           the buddy's pid (for init systems' daemon records)
//! <id>/status                              status record, replaced atomically
//! ```
//!
//! `docs/servicedir.md` is the long form. Everything here is path arithmetic; nothing touches
//! the file system except [`Settings::read`].

use crate::config::Service;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the settings inside a run directory.
pub const SETTINGS: &str = "settings.json";

/// Names of the scripts the renderer always writes (custom actions may not take them).
pub const RESERVED_SCRIPTS: &[&str] = &[
    "start",
    "stop",
    "reload",
    "health",
    "pipe_stdout",
    "pipe_stderr",
];

/// Paths inside one run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    /// The run directory of `id` under `svc_run_path`.
    pub fn of(svc_run_path: &Path, id: &crate::config::ServiceId) -> Self {
        RunDir::new(svc_run_path.join(id.to_string()))
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `actions/`.
    pub fn actions(&self) -> PathBuf {
        self.root.join("actions")
    }
    /// `actions/<name>`: `start`, `stop`, `reload` or a two-digit custom action number.
    pub fn action(&self, name: &str) -> PathBuf {
        self.actions().join(name)
    }
    /// `scripts/`.
    pub fn scripts(&self) -> PathBuf {
        self.root.join("scripts")
    }
    /// `scripts/<name>`.
    pub fn script(&self, name: &str) -> PathBuf {
        self.scripts().join(name)
    }
    /// `log/`.
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }
    /// `log/<name>`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log().join(name)
    }
    /// `buddy.sock`.
    pub fn socket(&self) -> PathBuf {
        self.root.join("buddy.sock")
    }
    /// `lock`.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// `buddy.pid`: written once the lock is held, removed on a clean exit.
    pub fn pidfile(&self) -> PathBuf {
        self.root.join("buddy.pid")
    }
    /// `status`.
    pub fn status(&self) -> PathBuf {
        self.root.join("status")
    }
    /// `settings.json`.
    pub fn settings(&self) -> PathBuf {
        self.root.join(SETTINGS)
    }
}

/// The two-digit name of custom action number `n` (1-based): `actions/01`.
pub fn action_number(n: usize) -> String {
    format!("{n:02}")
}

/// What the buddy runs by: the resolved service plus where its controller listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The resolved service.
    pub service: Service,
    /// The controller's socket, dialled when the buddy must phone home.
    pub controller_socket: PathBuf,
    /// The controller's BuddyPollingInterval in seconds, recorded for operators reading the
    /// directory; the buddy paces nothing by it (it pushes records as they happen).
    pub polling_interval: f64,
    /// The service's cgroup, relative to the buddy's own in each hierarchy (`upkeeper/web`);
    /// `None`: its processes are kept by their process group only (docs/containment.md).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The hash of the service's configuration (`services.config_hash` in the store), which
    /// the renderer writes; every `started` record carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

impl Settings {
    /// What the buddy of `service` runs by under the controller `ctl`.
    pub fn new(ctl: &crate::config::Controller, service: &Service) -> Settings {
        Settings {
            cgroup: ctl
                .cgroup
                .as_ref()
                .map(|base| format!("{base}/{}", service.id)),
            service: service.clone(),
            controller_socket: ctl.socket_path(),
            polling_interval: ctl.buddy_polling_interval,
            config_hash: None,
        }
    }

    /// Reads `settings.json`; the error is one sentence naming the file.
    pub fn read(path: &Path) -> Result<Settings, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{} is invalid: {e}", path.display()))
    }
}
