//! Validation: from a file's text to a [`Controller`] or a list of [`Service`]s.
//!
//! This module owns reading files (the type, symbolic link, ownership, mode and size checks,
//! made without ever blocking on a FIFO), driving the dialect pass and json5, walking the raw
//! values key by key against the controller keys and the service key table, layering,
//! `%(EXEC_*)` substitution (one pass, bounded result) and the cross-key checks of a resolved
//! service, and the effective controller defaults ([`Controller::defaults`]). Errors
//! accumulate in a [`Doc`] with the position of the key or value they are about; a file with
//! any error yields only its errors (at most [`MAX_ERRORS`] of them and a count).

use super::dialect::{lex, Lexed, Pos};
use super::keys::{
    canonical_key, did_you_mean, kind, number, ServiceLayer, MAX_KEY_SHOWN, MAX_SECONDS,
    SERVICE_KEYS,
};
use super::model::{Controller, Service, ServiceId};
use super::{ConfigError, ConfigErrors};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The keys of the controller file, canonical spelling.
pub const CONTROLLER_KEYS: &[&str] = &[
    "StateDir",
    "SvcConfigPath",
    "SvcRunPath",
    "UpkBuddyPath",
    "BuddyPollingInterval",
    "ControlGroup",
    "ReadGroup",
    "HistoryMaxAgeDays",
    "HistoryMaxEvents",
    "Cgroup",
    "MetricsListen",
    "ServiceDefaults",
];

/// `HistoryMaxAgeDays` at most: a century.
pub const MAX_HISTORY_DAYS: f64 = 36_500.0;
/// `HistoryMaxEvents` at most: far beyond any disk, far inside SQLite's i64.
pub const MAX_HISTORY_EVENTS: f64 = 1e12;

const UUID_IN_DEFAULTS: &str =
    "UUID: cannot be set in ServiceDefaults: every service needs its own";
const LIBEXEC_BUDDY: &str = "/usr/libexec/upkeeper/upk_buddy";

/// At most this many errors are reported per file, then one line counts the rest.
pub const MAX_ERRORS: usize = 100;

/// One file being validated: its positions and the errors found so far.
struct Doc<'a> {
    file: &'a Path,
    lexed: Lexed,
    errors: Vec<ConfigError>,
}

impl<'a> Doc<'a> {
    /// Lexes and parses `src`; `None` for a file of nothing but comments. A syntax error ends
    /// the file's validation here (nothing after it can be trusted).
    fn parse(src: &str, file: &'a Path) -> Result<(Doc<'a>, Option<Value>), ConfigErrors> {
        let lexed = lex(src);
        let mut doc = Doc {
            file,
            lexed,
            errors: Vec::new(),
        };
        for (pos, msg) in std::mem::take(&mut doc.lexed.errors) {
            doc.push(pos, msg);
        }
        if let Some((pos, msg)) = doc.lexed.syntax.take() {
            doc.push(pos, msg);
            return Err(doc.finish());
        }
        if doc.lexed.empty {
            return Ok((doc, None));
        }
        // Most files are plain JSON once the dialect's words are replaced: serde_json reads
        // them many times faster than json5, which takes the rest (comments, trailing commas,
        // unquoted keys) and explains syntax errors.
        if let Ok(v) = serde_json::from_str::<Value>(&doc.lexed.text) {
            return Ok((doc, Some(v)));
        }
        match json5::from_str::<Value>(&doc.lexed.text) {
            Ok(v) => Ok((doc, Some(v))),
            Err(json5::Error::Message { msg, location }) => {
                let pos = location.map_or(Pos::default(), |l| Pos {
                    line: l.line,
                    column: l.column,
                });
                let message = syntax_message(&msg, &doc.lexed.text, pos);
                doc.push(pos, message);
                Err(doc.finish())
            }
        }
    }

    fn push(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }

    fn at_key(&mut self, path: &[String], message: impl Into<String>) {
        let pos = self.lexed.key_pos(path);
        self.push(pos, message);
    }

    fn at_value(&mut self, path: &[String], message: impl Into<String>) {
        let pos = self.lexed.value_pos(path);
        self.push(pos, message);
    }

    /// Reports keys of the object at `path` given twice (compared after `fold`).
    fn duplicates(&mut self, path: &[String], fold: fn(&str) -> String, what: &str) {
        for (key, pos, first) in self.lexed.duplicates(path, fold) {
            let msg = format!(
                "duplicate {what} `{key}` (first given at line {}, column {})",
                first.line, first.column
            );
            self.push(pos, msg);
        }
    }

    /// Reads the object at `path` as a layer of service keys.
    fn layer(
        &mut self,
        path: &[String],
        obj: &Map<String, Value>,
        misplaced_hint: &str,
    ) -> ServiceLayer {
        self.duplicates(path, str::to_lowercase, "key");
        let mut layer = ServiceLayer::default();
        let mut seen = HashSet::new();
        for (key, value) in obj {
            let kpath = child(path, key);
            let Some(canon) = canonical_key(key) else {
                let msg = if CONTROLLER_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    format!("unknown key `{key}`: {misplaced_hint}")
                } else {
                    unknown(key, SERVICE_KEYS, self.errors.len())
                };
                self.at_key(&kpath, msg);
                continue;
            };
            if !seen.insert(canon) {
                continue; // reported as a duplicate
            }
            if let Err(problems) = layer.set(canon, value) {
                for p in problems {
                    let at =
                        p.at.map_or_else(|| kpath.clone(), |sub| child(&kpath, &sub));
                    self.at_value(&at, format!("{canon}: {}", p.message));
                }
            }
        }
        layer
    }

    fn finish(mut self) -> ConfigErrors {
        // Stable: errors at one position keep the order they were found in.
        self.errors.sort_by_key(|e| (e.line, e.column));
        // A file of thousands of mistakes is not read by anyone past the first screen, and
        // every line would go to the controller's log.
        if self.errors.len() > MAX_ERRORS {
            let more = self.errors.len() - MAX_ERRORS;
            self.errors.truncate(MAX_ERRORS);
            self.errors.push(ConfigError {
                file: self.file.to_owned(),
                line: 0,
                column: 0,
                message: format!("{more} more errors not shown"),
            });
        }
        ConfigErrors(self.errors)
    }
}

fn child(path: &[String], key: &str) -> Vec<String> {
    let mut p = path.to_vec();
    p.push(key.to_owned());
    p
}

/// The message for an unknown key, with a suggestion while `reported` (the errors so far) is
/// below [`MAX_ERRORS`]: past that the message is most likely cut, and a file of a hundred thousand
/// unknown keys would cost as many suggestion searches.
fn unknown(key: &str, known: &[&'static str], reported: usize) -> String {
    let length = key.chars().count();
    if length > MAX_KEY_SHOWN {
        let start: String = key.chars().take(MAX_KEY_SHOWN).collect();
        return format!("unknown key `{start}...` ({length} characters)");
    }
    let suggestion = (reported < MAX_ERRORS)
        .then(|| did_you_mean(key, known))
        .flatten();
    match suggestion {
        Some(k) => format!("unknown key `{key}`; did you mean `{k}`?"),
        None => format!("unknown key `{key}`"),
    }
}

/// Turns pest's multi-line report into one sentence; the position is reported separately.
fn syntax_message(msg: &str, text: &str, pos: Pos) -> String {
    let expected = msg
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("= "))
        .unwrap_or(msg)
        .replace("EOI", "end of file")
        .replace("char_literal", "more string characters or a closing quote");
    let found = text
        .lines()
        .nth(pos.line.saturating_sub(1))
        .and_then(|l| l.chars().nth(pos.column.saturating_sub(1)))
        .map_or_else(|| "end of line".to_owned(), |c| format!("`{c}`"));
    if expected.starts_with("expected") {
        format!("syntax error at {found}: {expected}")
    } else if expected.starts_with("error parsing") {
        format!(
            "invalid number: {} (out of range or malformed)",
            expected.trim_start_matches("error parsing ")
        )
    } else {
        format!("syntax error: {expected}")
    }
}

/// Parses a controller file for the current effective user; see [`Controller::defaults`] for
/// what missing keys become. Relative paths resolve against the directory of `file`.
pub fn parse_controller(src: &str, file: &Path) -> Result<Controller, ConfigErrors> {
    parse_controller_for(src, file, nix::unistd::geteuid().as_raw())
}

fn parse_controller_for(src: &str, file: &Path, euid: u32) -> Result<Controller, ConfigErrors> {
    let (mut doc, value) = Doc::parse(src, file)?;
    let mut c = Controller::defaults(euid);
    let obj = match value {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            doc.at_value(
                &[],
                format!(
                    "the controller file must be an object, found {}",
                    kind(&other)
                ),
            );
            return Err(doc.finish());
        }
    };
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
    doc.duplicates(&[], str::to_lowercase, "key");
    let (mut state_dir_set, mut run_path_set, mut cgroup_set) = (false, false, false);
    let mut seen = HashSet::new();
    for (key, value) in &obj {
        let kpath = vec![key.clone()];
        let Some(canon) = CONTROLLER_KEYS
            .iter()
            .copied()
            .find(|k| k.eq_ignore_ascii_case(key))
        else {
            let msg = match canonical_key(key) {
                Some(k) => format!("`{k}` is a service key: put it inside ServiceDefaults"),
                None => unknown(key, CONTROLLER_KEYS, doc.errors.len()),
            };
            doc.at_key(&kpath, msg);
            continue;
        };
        if !seen.insert(canon) || value.is_null() {
            continue; // a duplicate (reported), or Null: "not given"
        }
        let path_value = |doc: &mut Doc| match value.as_str() {
            Some(s) if !s.trim().is_empty() => Some(base.join(s)),
            Some(_) => {
                doc.at_value(&kpath, format!("{canon}: must not be empty"));
                None
            }
            None => {
                doc.at_value(
                    &kpath,
                    format!(
                        "{canon}: expected a path (a non-empty string), found {}",
                        kind(value)
                    ),
                );
                None
            }
        };
        match canon {
            "StateDir" => {
                if let Some(p) = path_value(&mut doc) {
                    c.state_dir = p;
                    state_dir_set = true;
                }
            }
            "SvcConfigPath" => {
                c.svc_config_path = path_value(&mut doc).unwrap_or(c.svc_config_path)
            }
            "SvcRunPath" => {
                if let Some(p) = path_value(&mut doc) {
                    c.svc_run_path = p;
                    run_path_set = true;
                }
            }
            "UpkBuddyPath" => c.upk_buddy_path = path_value(&mut doc).unwrap_or(c.upk_buddy_path),
            "BuddyPollingInterval" => match number(value) {
                Ok(n) if n > 0.0 && n <= MAX_SECONDS => c.buddy_polling_interval = n,
                Ok(n) => doc.at_value(
                    &kpath,
                    format!(
                        "{canon}: must be greater than 0 and at most {MAX_SECONDS} seconds, \
                         found {n}"
                    ),
                ),
                Err(_) => doc.at_value(
                    &kpath,
                    format!("{canon}: expected a number, found {}", kind(value)),
                ),
            },
            "ControlGroup" | "ReadGroup" => match group(value) {
                Ok(gid) if canon == "ControlGroup" => c.control_group = Some(gid),
                Ok(gid) => c.read_group = Some(gid),
                Err(msg) => doc.at_value(&kpath, format!("{canon}: {msg}")),
            },
            "HistoryMaxAgeDays" => match number(value) {
                Ok(n) if n > 0.0 && n <= MAX_HISTORY_DAYS => c.history_max_age_days = Some(n),
                Ok(n) => doc.at_value(
                    &kpath,
                    format!(
                        "{canon}: must be greater than 0 and at most {MAX_HISTORY_DAYS} days, \
                         found {n}"
                    ),
                ),
                Err(_) => doc.at_value(
                    &kpath,
                    format!("{canon}: expected a number, found {}", kind(value)),
                ),
            },
            "HistoryMaxEvents" => match number(value) {
                Ok(n) if (1.0..=MAX_HISTORY_EVENTS).contains(&n) && n.fract() == 0.0 => {
                    c.history_max_events = Some(n as u64)
                }
                Ok(n) => doc.at_value(
                    &kpath,
                    format!(
                        "{canon}: must be a whole number from 1 to {MAX_HISTORY_EVENTS}, \
                         found {n}"
                    ),
                ),
                Err(_) => doc.at_value(
                    &kpath,
                    format!("{canon}: expected a number, found {}", kind(value)),
                ),
            },
            "MetricsListen" => match metrics_listen(value) {
                Ok(addr) => c.metrics_listen = Some(addr),
                Err(msg) => doc.at_value(&kpath, format!("{canon}: {msg}")),
            },
            "Cgroup" => match cgroup_name(value) {
                Ok(name) => {
                    c.cgroup = name;
                    cgroup_set = true;
                }
                Err(msg) => doc.at_value(&kpath, format!("{canon}: {msg}")),
            },
            _ => match value {
                Value::Object(m) => {
                    let hint = "it belongs at the top level, not in ServiceDefaults";
                    let layer = doc.layer(&kpath, m, hint);
                    if let Some(Some(_)) = layer.uuid {
                        doc.at_value(&child(&kpath, "UUID"), UUID_IN_DEFAULTS);
                    }
                    c.service_defaults = layer;
                }
                _ => doc.at_value(
                    &kpath,
                    format!(
                        "{canon}: expected an object of service keys, found {}",
                        kind(value)
                    ),
                ),
            },
        }
    }
    if state_dir_set && !run_path_set {
        c.svc_run_path = c.state_dir.join("buddies");
    }
    if !cgroup_set {
        c.cgroup = Some(default_cgroup(&c.svc_run_path));
    }
    if doc.errors.is_empty() {
        Ok(c)
    } else {
        Err(doc.finish())
    }
}

/// Parses a service file: an object mapping service ids to service entries, each layered over
/// `defaults` (normally the controller's `ServiceDefaults`) over the built-in defaults.
/// A file of nothing but comments holds no services.
pub fn parse_services(
    src: &str,
    file: &Path,
    defaults: &ServiceLayer,
) -> Result<Vec<Service>, ConfigErrors> {
    let (mut doc, value) = Doc::parse(src, file)?;
    let obj = match value {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            let msg = format!(
                "a service file must be an object mapping service ids to entries, found {}",
                kind(&other)
            );
            doc.at_value(&[], msg);
            return Err(doc.finish());
        }
    };
    let lower = defaults.over(&ServiceLayer::builtin());
    doc.duplicates(&[], str::to_owned, "service id");
    // serde_json keeps only the last of a repeated id; judging that one alone would only add noise.
    let repeated: HashSet<String> = doc
        .lexed
        .duplicates(&[], str::to_owned)
        .into_iter()
        .map(|d| d.0)
        .collect();
    let mut services = Vec::new();
    let mut uuids: HashMap<String, String> = HashMap::new();
    for (key, value) in &obj {
        let kpath = vec![key.clone()];
        let id = ServiceId::parse(key)
            .map_err(|e| doc.at_key(&kpath, format!("bad service id `{key}`: {e}")));
        let Value::Object(entry) = value else {
            doc.at_value(
                &kpath,
                format!(
                    "service `{key}`: expected an object of service keys, found {}",
                    kind(value)
                ),
            );
            continue;
        };
        let hint = "it is a controller key and belongs in the controller file";
        let before = doc.errors.len();
        let layer = doc.layer(&kpath, entry, hint);
        let Ok(id) = id else { continue };
        // Cross-key checks on an entry with a bad key would only echo that key's error.
        if repeated.contains(key) || doc.errors.len() > before {
            continue;
        }
        let service = layer.over(&lower).into_service(id);
        match resolve(service) {
            Ok(s) => {
                if let Some(u) = &s.uuid {
                    if let Some(other) = uuids.insert(u.clone(), key.clone()) {
                        doc.at_value(
                            &child(&kpath, "UUID"),
                            format!("UUID {u} is also the UUID of service `{other}`"),
                        );
                    }
                }
                services.push(s);
            }
            Err(msgs) => {
                for m in msgs {
                    doc.at_key(&kpath, format!("service `{key}`: {m}"));
                }
            }
        }
    }
    if doc.errors.is_empty() {
        Ok(services)
    } else {
        Err(doc.finish())
    }
}

const PLACEHOLDERS: [(&str, &str); 3] = [
    ("%(EXEC_START)", "ExecStart"),
    ("%(EXEC_STOP)", "ExecStop"),
    ("%(EXEC_RELOAD)", "ExecReload"),
];

/// The longest script after substitution: a script is a few lines, and a file can hold at
/// most [`MAX_FILE_SIZE`] bytes, but placeholders multiply it.
pub const MAX_SCRIPT_SIZE: usize = 1 << 20;

/// `text` with every placeholder replaced by its value, in one pass over `text`: a value is
/// inserted as it is and never searched for placeholders itself, so `ExecStart` holding
/// `%(EXEC_STOP)` cannot chain. `Err` names each placeholder whose key is unset, or says the
/// result would pass [`MAX_SCRIPT_SIZE`] (checked before anything is built).
fn substitute(text: &str, values: &[Option<String>; 3]) -> Result<String, Vec<String>> {
    // Every placeholder starts with this: one linear scan finds them all.
    const LEAD: &str = "%(EXEC_";
    let mut pieces: Vec<(&str, Option<usize>)> = Vec::new(); // literal text, then a value
    let mut at = 0;
    while let Some(found) = text[at..].find(LEAD) {
        let i = at + found;
        match PLACEHOLDERS
            .iter()
            .position(|(ph, _)| text[i..].starts_with(ph))
        {
            Some(k) => {
                pieces.push((&text[at..i], Some(k)));
                at = i + PLACEHOLDERS[k].0.len();
            }
            None => {
                pieces.push((&text[at..i + LEAD.len()], None));
                at = i + LEAD.len();
            }
        }
    }
    pieces.push((&text[at..], None));
    let used = |k: usize| pieces.iter().any(|p| p.1 == Some(k));
    let unset: Vec<String> = (0..PLACEHOLDERS.len())
        .filter(|&k| values[k].is_none() && used(k))
        .map(|k| {
            let (ph, key) = PLACEHOLDERS[k];
            format!("uses {ph} but {key} is not set")
        })
        .collect();
    if !unset.is_empty() {
        return Err(unset);
    }
    let value = |k: Option<usize>| k.and_then(|k| values[k].as_deref()).unwrap_or_default();
    let size = pieces.iter().fold(0usize, |n, (lit, k)| {
        n.saturating_add(lit.len()).saturating_add(value(*k).len())
    });
    if size > MAX_SCRIPT_SIZE {
        return Err(vec![format!(
            "is {size} bytes after %(EXEC_*) substitution, more than {MAX_SCRIPT_SIZE}"
        )]);
    }
    let mut out = String::with_capacity(size);
    for (lit, k) in pieces {
        out.push_str(lit);
        out.push_str(value(k));
    }
    Ok(out)
}

/// Substitutes the `%(EXEC_*)` placeholders in every script; a placeholder whose `Exec*` key
/// is unset is an error naming both keys, and so is a script that would grow past
/// [`MAX_SCRIPT_SIZE`].
fn resolve(mut s: Service) -> Result<Service, Vec<String>> {
    let values = [
        s.exec_start.clone(),
        s.exec_stop.clone(),
        s.exec_reload.clone(),
    ];
    let mut errs = Vec::new();
    let mut subst = |what: &str, text: &mut String| match substitute(text, &values) {
        Ok(done) => *text = done,
        Err(e) => errs.extend(e.into_iter().map(|e| format!("{what} {e}"))),
    };
    subst("StartScript", &mut s.start_script);
    subst("StopScript", &mut s.stop_script);
    subst("ReloadScript", &mut s.reload_script);
    for a in &mut s.custom_actions {
        subst(&format!("CustomActions `{}`", a.name), &mut a.script);
    }
    if let Some(p) = &mut s.pipe_stdout_script {
        subst("PipeStdoutScript", p);
    }
    if let Some(p) = &mut s.pipe_stderr_script {
        subst("PipeStderrScript", p);
    }
    if let Some(p) = &mut s.health_check {
        subst("HealthCheck", p);
    }
    // A `Null` hook only removes an inherited one: it is not a hook of the service.
    s.notify.retain(|h| h.run.is_some());
    for h in &mut s.notify {
        if let Some(run) = &mut h.run {
            subst(&format!("Notify `{}`", h.name), run);
        }
    }
    let one_file = s.redirect_stdout.is_some() && s.redirect_stdout == s.redirect_stderr;
    let built_in = s.pipe_stdout_script.is_none() && s.pipe_stderr_script.is_none();
    if s.log_max_size.is_some() && one_file && built_in {
        errs.push(
            "LogMaxSize needs RedirectStdout and RedirectStderr to be two files (two loggers \
             cannot rotate one)"
                .to_owned(),
        );
    }
    if s.readiness == super::Readiness::Health && s.health_check.is_none() {
        errs.push("Readiness \"health\" needs a HealthCheck".to_owned());
    }
    if errs.is_empty() {
        Ok(s)
    } else {
        Err(errs)
    }
}

/// True when the file at `path` reads as a controller file rather than a service file: a
/// non-empty object whose keys are all controller keys (case-insensitive) and whose values
/// are not all objects (a service file's are). `upkctl check FILE` tells the kinds apart so.
pub fn is_controller_file(path: &Path) -> bool {
    let Ok(src) = read_config(path) else {
        return false;
    };
    let Ok((_, Some(Value::Object(obj)))) = Doc::parse(&src, path) else {
        return false;
    };
    !obj.is_empty()
        && obj
            .keys()
            .all(|k| CONTROLLER_KEYS.iter().any(|c| c.eq_ignore_ascii_case(k)))
        && !obj.values().all(Value::is_object)
}

/// Reads a controller file (refusing one others could have written) and parses it.
pub fn load_controller(path: &Path) -> Result<Controller, ConfigErrors> {
    parse_controller(&read_config(path)?, path)
}

/// Reads a service file (refusing one others could have written) and parses it.
pub fn load_services(path: &Path, defaults: &ServiceLayer) -> Result<Vec<Service>, ConfigErrors> {
    parse_services(&read_config(path)?, path, defaults)
}

/// The largest configuration file upkeeper reads: 1 MiB, hundreds of services. Validation
/// runs inside the controller's loop, which must not stall on a giant file.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The kind of a file that is not a regular file, for a message.
fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Reads a configuration file after the checks of `docs/configuration.md` (File ownership):
/// the name is looked at before anything is opened (a FIFO would block the opener until a
/// writer comes, a device may act on open), a symbolic link is followed only if root or the
/// controller's user made it and it leads to a regular file, and the opened file itself is
/// checked again (so a swap in between cannot slip past) for type, owner, mode and size.
fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |line: usize, column: usize, message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line,
            column,
            message,
        }])
    };
    let euid = nix::unistd::geteuid().as_raw();
    let cannot = |e: std::io::Error| fail(0, 0, format!("cannot read: {e}"));
    let name = std::fs::symlink_metadata(path).map_err(cannot)?;
    if name.file_type().is_symlink() {
        let target =
            std::fs::read_link(path).map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
        let link = format!("refusing to read: it is a symbolic link to {target}");
        check_owner(name.uid(), euid)
            .map_err(|m| fail(0, 0, format!("{link}, and the link {m}")))?;
        let why = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => None,
            Ok(m) => Some(format!(
                "which is a {}, not a regular file",
                file_kind(m.file_type())
            )),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Some("that loops (too many levels of symbolic links)".to_owned())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("which does not exist".to_owned())
            }
            Err(e) => Some(format!("which cannot be read: {e}")),
        };
        if let Some(why) = why {
            return Err(fail(0, 0, format!("{link}, {why}")));
        }
    } else if !name.is_file() {
        let kind = file_kind(name.file_type());
        return Err(fail(
            0,
            0,
            format!("refusing to read: it is a {kind}, not a regular file"),
        ));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    // The checks look at the opened file, so a rename in between cannot swap it.
    let meta = f.metadata().map_err(cannot)?;
    if !meta.is_file() {
        let kind = file_kind(meta.file_type());
        return Err(fail(
            0,
            0,
            format!("refusing to read: it is a {kind}, not a regular file"),
        ));
    }
    check_owner_and_mode(meta.uid(), meta.mode(), euid).map_err(|m| fail(0, 0, m))?;
    let too_big = |size: u64| {
        fail(
            0,
            0,
            format!(
                "refusing to read: it is {size} bytes, more than the {MAX_FILE_SIZE} a \
                 configuration file may hold; split it into several files"
            ),
        )
    };
    if meta.len() > MAX_FILE_SIZE {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    // A file that grows after the check is still read no further than the bound.
    f.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let good = std::str::from_utf8(good).unwrap_or_default();
        let line = good.matches('\n').count() + 1;
        let column = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        fail(line, column, "the file is not valid UTF-8".to_owned())
    })
}

/// Only root and the controller's own user may have written a configuration file.
fn check_owner_and_mode(uid: u32, mode: u32, euid: u32) -> Result<(), String> {
    if mode & 0o022 != 0 {
        return Err(format!(
            "refusing to read: it is writable by group/others (mode {:04o}); chmod go-w it",
            mode & 0o7777
        ));
    }
    check_owner(uid, euid).map_err(|m| format!("refusing to read: it {m}"))
}

/// `Err("is owned by uid N, not by ...; chown it")` unless `uid` is root or `euid`.
fn check_owner(uid: u32, euid: u32) -> Result<(), String> {
    if uid != 0 && uid != euid {
        let allowed = if euid == 0 {
            "root".to_owned()
        } else {
            format!("root or uid {euid} (the controller's user)")
        };
        return Err(format!("is owned by uid {uid}, not by {allowed}; chown it"));
    }
    Ok(())
}

/// The controller file used when `--config` is not given: `/etc/upkeeper/upkeeper.conf` for
/// root, `$XDG_CONFIG_HOME/upkeeper/upkeeper.conf` otherwise.
pub fn controller_file(euid: u32) -> PathBuf {
    if euid == 0 {
        return PathBuf::from("/etc/upkeeper/upkeeper.conf");
    }
    let defaults = Controller::defaults(euid);
    defaults.svc_config_path.parent().map_or_else(
        || PathBuf::from("upkeeper.conf"),
        |p| p.join("upkeeper.conf"),
    )
}

/// Loads the controller file; a missing default file means built-in defaults.
pub fn load_controller_or_defaults(path: Option<&Path>) -> Result<Controller, ConfigErrors> {
    let euid = nix::unistd::geteuid().as_raw();
    match path {
        Some(p) => load_controller(p),
        None => {
            let p = controller_file(euid);
            if p.exists() {
                load_controller(&p)
            } else {
                Ok(Controller::defaults(euid))
            }
        }
    }
}

impl Controller {
    /// The effective configuration when there is no controller file, for a controller running
    /// with effective uid `euid`: system paths for root, XDG paths for everyone else, so that a
    /// newcomer's `upkeeper` runs without any set-up.
    pub fn defaults(euid: u32) -> Controller {
        let common = |state_dir: PathBuf,
                      svc_config_path,
                      svc_run_path: PathBuf,
                      upk_buddy_path| Controller {
            cgroup: Some(default_cgroup(&svc_run_path)),
            state_dir,
            svc_config_path,
            svc_run_path,
            upk_buddy_path,
            buddy_polling_interval: 0.5,
            control_group: None,
            read_group: None,
            history_max_age_days: Some(90.0),
            history_max_events: Some(10_000_000),
            metrics_listen: None,
            service_defaults: ServiceLayer::default(),
        };
        // A buddy next to the running binary (a build tree, a tarball) wins over the
        // installed location, for root and users alike.
        let buddy = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("upk_buddy")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| LIBEXEC_BUDDY.into());
        if euid == 0 {
            return common(
                "/var/lib/upkeeper".into(),
                "/etc/upkeeper/upkeeper.d".into(),
                "/run/upkeeper/buddies".into(),
                buddy,
            );
        }
        let home = home_dir(euid);
        let state_dir = xdg_dir("XDG_STATE_HOME", &home, ".local/state").join("upkeeper");
        common(
            state_dir.clone(),
            xdg_dir("XDG_CONFIG_HOME", &home, ".config").join("upkeeper/upkeeper.d"),
            state_dir.join("buddies"),
            buddy,
        )
    }
}

/// The run path of the system instance, whose services' cgroups are `upkeeper/<id>`.
const SYSTEM_RUN_PATH: &str = "/run/upkeeper/buddies";

/// `Cgroup` when it is not given: `upkeeper` for the system instance, and for any other
/// `upkeeper-` and eight hex digits of its `SvcRunPath` (FNV-1a), so that two instances on
/// one host (a user's, a test's) never share a service's cgroup.
pub fn default_cgroup(svc_run_path: &Path) -> String {
    if svc_run_path == Path::new(SYSTEM_RUN_PATH) {
        return "upkeeper".into();
    }
    let hash = svc_run_path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
    format!("upkeeper-{hash:08x}")
}

/// `Cgroup`: `false` (no cgroups: process groups only), or a relative path of plain names.
fn cgroup_name(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Bool(false) => Ok(None),
        Value::String(s) => {
            let ok = |part: &str| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part.len() <= 64
                    && !part.starts_with("cgroup.")
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.@+-".contains(c))
            };
            if s.len() <= 255 && s.split('/').all(ok) {
                Ok(Some(s.clone()))
            } else {
                Err(format!(
                    "{s:?} must be a relative path of names made of letters, digits and _.@+- \
                     (not `.`, `..` or `cgroup.*`)"
                ))
            }
        }
        other => Err(format!(
            "expected a relative cgroup path or false, found {}",
            kind(other)
        )),
    }
}

/// `MetricsListen`: `ADDRESS:PORT` (`127.0.0.1:9477`, `[::1]:9477`) or `:PORT`, which means
/// loopback (`127.0.0.1`): an address other than loopback is only ever written out in full.
/// Host names are refused, so that what the controller binds never depends on a resolver.
pub fn metrics_listen(value: &Value) -> Result<std::net::SocketAddr, String> {
    let Value::String(s) = value else {
        return Err(format!(
            "expected \"ADDRESS:PORT\" or \":PORT\" (a string), found {}",
            kind(value)
        ));
    };
    let shown: String = s.chars().take(MAX_KEY_SHOWN).collect();
    let addr = match s.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.clone(),
    };
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("{shown:?} has port 0; give a port from 1 to 65535")),
        Ok(a) => Ok(a),
        Err(_) => Err(format!(
            "{shown:?} is not \"ADDRESS:PORT\" or \":PORT\" with a numeric IPv4 or [IPv6] \
             address and a port from 1 to 65535"
        )),
    }
}

/// A group by name (looked up now) or number.
fn group(value: &Value) -> Result<u32, String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{n} is not a group id")),
        Value::String(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(format!("there is no group named {name:?}")),
            Err(e) => Err(format!("cannot look up the group {name:?}: {e}")),
        },
        other => Err(format!(
            "expected a group name or id, found {}",
            kind(other)
        )),
    }
}

/// `$HOME`, else the user database's home, else a private directory under the temp dir.
fn home_dir(euid: u32) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(euid))
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| std::env::temp_dir().join(format!("upkeeper-{euid}")))
}

/// An XDG base directory; the specification says to ignore relative values.
fn xdg_dir(var: &str, home: &Path, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(fallback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_mode_rules() {
        assert!(check_owner_and_mode(0, 0o100644, 1000).is_ok());
        assert!(check_owner_and_mode(1000, 0o100600, 1000).is_ok());
        let e = check_owner_and_mode(0, 0o100664, 0).expect_err("group-writable");
        assert_eq!(
            e,
            "refusing to read: it is writable by group/others (mode 0664); chmod go-w it"
        );
        let e = check_owner_and_mode(1001, 0o100644, 1000).expect_err("foreign owner");
        assert!(e.contains("owned by uid 1001"), "{e}");
        assert!(check_owner_and_mode(1000, 0o100644, 0).is_err());
    }

    #[test]
    fn root_defaults_are_system_paths() {
        let c = Controller::defaults(0);
        assert_eq!(c.state_dir, Path::new("/var/lib/upkeeper"));
        assert_eq!(c.svc_run_path, Path::new("/run/upkeeper/buddies"));
        assert_eq!(c.upk_buddy_path, Path::new(LIBEXEC_BUDDY));
        assert_eq!(c.buddy_polling_interval, 0.5);
    }

    #[test]
    fn user_defaults_live_under_home_and_derive_from_state_dir() {
        let c = Controller::defaults(4242);
        assert!(c.state_dir.ends_with("upkeeper"), "{:?}", c.state_dir);
        assert_eq!(c.svc_run_path, c.state_dir.join("buddies"));
        assert!(c.svc_config_path.ends_with("upkeeper/upkeeper.d"));
    }

    #[test]
    fn controller_keys_for_root_and_relative_paths() {
        let src = "{statedir: 'state', UpkBuddyPath: '/opt/b', BuddyPollingInterval: 2}";
        let c = parse_controller_for(src, Path::new("/etc/upk/upkeeper.conf"), 0).expect("valid");
        assert_eq!(c.state_dir, Path::new("/etc/upk/state"));
        assert_eq!(c.svc_run_path, Path::new("/etc/upk/state/buddies"));
        assert_eq!(c.svc_config_path, Path::new("/etc/upkeeper/upkeeper.d"));
        assert_eq!(c.buddy_polling_interval, 2.0);
    }

    #[test]
    fn syntax_messages_are_one_line() {
        let m = syntax_message(
            " --> 1:6\n  |\n1 | {a:1}}\n  |      ^---\n  |\n  = expected EOI",
            "{a:1}}",
            Pos { line: 1, column: 6 },
        );
        assert_eq!(m, "syntax error at `}`: expected end of file");
    }
}
