//! The service key table: every service key's canonical spelling, its type, how a raw value
//! becomes that type, and its built-in default, declared once.
//!
//! From that one table the `service_keys!` macro generates [`ServiceLayer`] (one optional
//! field per key), its built-in layer, the merge of two layers, setting a key from a raw
//! value, the final conversion into a [`Service`], and [`SERVICE_KEYS`]. A key whose
//! `Service` field is `Option<X>` has a layer field `Option<Option<X>>`: `Some(None)` is an
//! explicit `Null` that resets the key to unset, `None` means "not given here".

use super::model::{
    CustomAction, EnvFile, HealthAction, Hook, HookEvent, IdSpec, InitialState, IoClass, Readiness,
    RlimitValue, Service, ServiceId, MAX_CUSTOM_ACTIONS,
};
use crate::rundir::RESERVED_SCRIPTS;
use serde_json::Value;
use std::path::PathBuf;

/// One problem with a key's value: `at` names the member or element it is about (a custom
/// action's name, `"[2]"` for an array element) when that is more precise than the value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub at: Option<String>,
    pub message: String,
}

pub(crate) type Parsed<T> = Result<T, Vec<Problem>>;

fn problem<T>(message: impl Into<String>) -> Parsed<T> {
    Err(vec![Problem {
        at: None,
        message: message.into(),
    }])
}

/// How a raw value is named in "expected X, found Y".
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected<T>(what: &str, v: &Value) -> Parsed<T> {
    problem(format!("expected {what}, found {}", kind(v)))
}

/// A non-nullable key: `Null` means "not given", so the lower layer's value applies.
fn plain<T>(f: fn(&Value) -> Parsed<T>) -> impl Fn(&Value) -> Parsed<Option<T>> {
    move |v| {
        if v.is_null() {
            Ok(None)
        } else {
            f(v).map(Some)
        }
    }
}

/// A nullable key: `Null` explicitly unsets it.
fn nullable<T>(f: fn(&Value) -> Parsed<T>) -> impl Fn(&Value) -> Parsed<Option<Option<T>>> {
    move |v| {
        if v.is_null() {
            Ok(Some(None))
        } else {
            f(v).map(|x| Some(Some(x)))
        }
    }
}

/// A finite number (the dialect and json5 already refuse `NaN`, `Infinity` and `1e999`).
pub(crate) fn number(v: &Value) -> Parsed<f64> {
    match v.as_f64() {
        Some(n) if n.is_finite() => Ok(n),
        Some(n) => problem(format!("{n} is not a finite number")),
        None => expected("a number", v),
    }
}

/// The longest time any key may name, in seconds: 365 days. Every deadline a buddy or the
/// controller computes from a key is then far inside what `Instant` and `Duration` hold.
pub const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// Seconds, at most [`MAX_SECONDS`].
fn seconds(n: f64) -> Parsed<f64> {
    if n > MAX_SECONDS {
        problem(format!(
            "must be at most {MAX_SECONDS} seconds (365 days), found {n}"
        ))
    } else {
        Ok(n)
    }
}

/// Seconds greater than 0.
fn positive(v: &Value) -> Parsed<f64> {
    match number(v)? {
        n if n > 0.0 => seconds(n),
        n => problem(format!("must be greater than 0, found {n}")),
    }
}

/// Seconds, 0 or more.
fn non_negative(v: &Value) -> Parsed<f64> {
    match number(v)? {
        n if n >= 0.0 => seconds(n),
        n => problem(format!("must not be negative, found {n}")),
    }
}

/// `KillTimeout`: seconds, or any negative number for "never signal".
fn kill_timeout(v: &Value) -> Parsed<f64> {
    seconds(number(v)?)
}

/// An integer; `5.0` and `1e3` are integers too, `1.5` is not.
fn integer(v: &Value) -> Parsed<i64> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        Some(f) if f.fract() == 0.0 && f.is_finite() => {
            problem(format!("{f} is out of range for an integer"))
        }
        Some(f) => problem(format!("expected an integer, found {f}")),
        None => expected("an integer", v),
    }
}

/// `StartPriority`: an integer within an i32, far beyond any need of ordering.
fn priority(v: &Value) -> Parsed<i64> {
    match integer(v)? {
        i if (i64::from(i32::MIN)..=i64::from(i32::MAX)).contains(&i) => Ok(i),
        i => problem(format!(
            "must be between {} and {}, found {i}",
            i32::MIN,
            i32::MAX
        )),
    }
}

/// A count compared with a u32 counter (`MaxConsecutiveFailures`, `ReconnectRetries`); any
/// negative number means "without limit" and is kept as -1.
fn count_or_unlimited(v: &Value) -> Parsed<i64> {
    match integer(v)? {
        i if i < 0 => Ok(-1),
        i if i <= i64::from(u32::MAX) => Ok(i),
        i => problem(format!(
            "must be at most {} (or negative for no limit), found {i}",
            u32::MAX
        )),
    }
}

fn bounded_u32(v: &Value, min: i64, max: i64) -> Parsed<u32> {
    match integer(v)? {
        // The bounds are within u32 by construction, so the conversion cannot fail.
        i if (min..=max).contains(&i) => Ok(u32::try_from(i).unwrap_or(u32::MAX)),
        i => problem(format!("must be between {min} and {max}, found {i}")),
    }
}

/// UserMaxRestarts: 0 would mean "never restart", which is MaxConsecutiveFailures' job.
fn max_restarts(v: &Value) -> Parsed<u32> {
    match integer(v)? {
        0 => problem("must be at least 1 (to never restart, set MaxConsecutiveFailures: 0)"),
        _ => bounded_u32(v, 1, i64::from(u32::MAX)),
    }
}

/// Large enough for any sane burst, small enough that a typo cannot make a buddy allocate
/// gigabytes.
pub const MAX_RINGBUFFER_SIZE: u32 = 1 << 20;

fn ringbuffer_size(v: &Value) -> Parsed<u32> {
    bounded_u32(v, 2, i64::from(MAX_RINGBUFFER_SIZE))
}

fn boolean(v: &Value) -> Parsed<bool> {
    v.as_bool().map_or_else(|| expected("true or false", v), Ok)
}

fn string(v: &Value) -> Parsed<String> {
    v.as_str()
        .map_or_else(|| expected("a string", v), |s| Ok(s.to_owned()))
}

fn non_empty(v: &Value) -> Parsed<String> {
    match string(v)? {
        s if s.trim().is_empty() => problem("must not be empty (use Null to unset it)"),
        s => Ok(s),
    }
}

fn script(v: &Value) -> Parsed<String> {
    match string(v)? {
        s if s.trim().is_empty() => problem("must not be empty"),
        s => Ok(s),
    }
}

fn strings(v: &Value) -> Parsed<Vec<String>> {
    let Some(items) = v.as_array() else {
        return expected("an array of strings", v);
    };
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if !s.trim().is_empty() => out.push(s.to_owned()),
            Some(_) => errs.push(Problem {
                at: Some(format!("[{i}]")),
                message: "entries must not be empty".into(),
            }),
            None => errs.push(Problem {
                at: Some(format!("[{i}]")),
                message: format!("expected an array of strings, found {} in it", kind(item)),
            }),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// A UUID in any form the `uuid` crate reads, stored hyphenated and lowercase so that
/// `uuid#...` prerequisites compare equal however either side was written.
fn uuid(v: &Value) -> Parsed<String> {
    let s = string(v)?;
    match uuid::Uuid::parse_str(s.trim()) {
        Ok(u) => Ok(u.hyphenated().to_string()),
        Err(e) => problem(format!("{s:?} is not a valid UUID ({e})")),
    }
}

/// A user or group: a number, or a name; a name made only of digits is taken as the number.
fn id_spec(v: &Value) -> Parsed<IdSpec> {
    match v {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u32>() {
                Ok(n) if n != u32::MAX => Ok(IdSpec::Id(n)),
                _ => problem(format!("{s} is out of range for a user or group id")),
            }
        }
        Value::String(s) => {
            if s.is_empty()
                || s.len() > 256
                || s.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
            {
                problem(format!("{s:?} is not a valid user or group name"))
            } else {
                Ok(IdSpec::Name(s.clone()))
            }
        }
        // u32::MAX is "no change" to setuid(2), never a real id.
        Value::Number(_) => bounded_u32(v, 0, i64::from(u32::MAX) - 1).map(IdSpec::Id),
        _ => expected("a number or a name", v),
    }
}

/// `SetUID`: an [`id_spec`] whose name, if any, the user database knows. A name it says does
/// not exist would make every start fail; a lookup that itself fails (NSS unreachable) leaves
/// the name for the buddy to resolve when it starts the service.
fn user_spec(v: &Value) -> Parsed<IdSpec> {
    let spec = id_spec(v)?;
    if let IdSpec::Name(name) = &spec {
        if let Ok(None) = nix::unistd::User::from_name(name) {
            return problem(format!("there is no user named {name:?} on this system"));
        }
    }
    Ok(spec)
}

/// `SetGID`: like [`user_spec`], with the group database.
fn group_spec(v: &Value) -> Parsed<IdSpec> {
    let spec = id_spec(v)?;
    if let IdSpec::Name(name) = &spec {
        if let Ok(None) = nix::unistd::Group::from_name(name) {
            return problem(format!("there is no group named {name:?} on this system"));
        }
    }
    Ok(spec)
}

/// A redirect target: absolute, or relative to the service's run directory without `..`
/// (a relative path never leaves the run directory).
fn redirect_path(v: &Value) -> Parsed<PathBuf> {
    let path = PathBuf::from(non_empty(v)?);
    let escapes = path
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    if path.is_relative() && escapes {
        problem(format!(
            "{} is relative and leaves the run directory; use an absolute path",
            path.display()
        ))
    } else {
        Ok(path)
    }
}

fn initial_state(v: &Value) -> Parsed<InitialState> {
    match string(v)?.to_ascii_lowercase().as_str() {
        "stopped" => Ok(InitialState::Stopped),
        "running" => Ok(InitialState::Running),
        _ => problem("must be \"stopped\" or \"running\""),
    }
}

/// Checks a custom action's name; the message says what is wrong.
pub fn check_action_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    if name.is_empty() || name.len() > 32 || !name.chars().all(ok) {
        Err(format!(
            "action name {name:?} must be 1 to 32 characters of letters, digits and _.-"
        ))
    } else if name.starts_with(['.', '-']) {
        Err(format!(
            "action name {name:?} must not start with '.' or '-'"
        ))
    } else if name.bytes().all(|b| b.is_ascii_digit()) {
        Err(format!(
            "action name {name:?} must not be all digits (numbers address actions by position)"
        ))
    } else if RESERVED_SCRIPTS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        Err(format!(
            "action name {name:?} is reserved for a built-in script"
        ))
    } else {
        Ok(())
    }
}

fn custom_actions(v: &Value) -> Parsed<Vec<CustomAction>> {
    let Some(map) = v.as_object() else {
        return expected("an object mapping action names to scripts", v);
    };
    let mut errs = Vec::new();
    if map.len() > MAX_CUSTOM_ACTIONS {
        errs.push(Problem {
            at: None,
            message: format!(
                "at most {MAX_CUSTOM_ACTIONS} custom actions are allowed, found {}",
                map.len()
            ),
        });
    }
    let mut out = Vec::new();
    for (name, body) in map {
        let at = Some(name.clone());
        if let Err(message) = check_action_name(name) {
            errs.push(Problem { at, message });
            continue;
        }
        match script(body) {
            Ok(script) => out.push(CustomAction {
                name: name.clone(),
                script,
            }),
            Err(e) => errs.extend(e.into_iter().map(|p| Problem {
                at: at.clone(),
                message: format!("action `{name}`: {}", p.message),
            })),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

fn health_retries(v: &Value) -> Parsed<u32> {
    bounded_u32(v, 1, 1000)
}

fn health_action(v: &Value) -> Parsed<HealthAction> {
    match string(v)?.to_ascii_lowercase().as_str() {
        "restart" => Ok(HealthAction::Restart),
        "record" => Ok(HealthAction::Record),
        _ => problem("must be \"restart\" or \"record\""),
    }
}

/// `"none"`, `"fd:N"` (N at least 3: 0-2 are the standard streams), `"notify"` or `"health"`.
fn readiness(v: &Value) -> Parsed<Readiness> {
    let text = string(v)?.to_ascii_lowercase();
    match text.as_str() {
        "none" => return Ok(Readiness::None),
        "notify" => return Ok(Readiness::Notify),
        "health" => return Ok(Readiness::Health),
        _ => {}
    }
    match text.strip_prefix("fd:").map(str::parse::<u32>) {
        Some(Ok(n)) if (3..=1023).contains(&n) => Ok(Readiness::Fd(n)),
        Some(_) => problem(format!(
            "{text:?}: the descriptor must be a number from 3 to 1023"
        )),
        None => problem("must be \"none\", \"fd:N\", \"notify\" or \"health\""),
    }
}

/// A restart backoff factor: 1 keeps the delay constant, 2 doubles it per failure.
fn backoff(v: &Value) -> Parsed<f64> {
    match number(v)? {
        n if (1.0..=100.0).contains(&n) => Ok(n),
        n => problem(format!("must be between 1 and 100, found {n}")),
    }
}

const HOOK_KEYS: [&str; 3] = ["Run", "On", "Timeout"];
const DEFAULT_HOOK_TIMEOUT: f64 = 30.0;

/// `Notify`: an object mapping hook names to `{ Run, On, Timeout }`, or to `Null` to remove a
/// hook of that name inherited from `ServiceDefaults`.
fn hooks(v: &Value) -> Parsed<Vec<Hook>> {
    let Some(map) = v.as_object() else {
        return expected("an object mapping hook names to hooks", v);
    };
    let mut errs = Vec::new();
    let mut out = Vec::new();
    for (name, body) in map {
        let at = Some(name.clone());
        let mut fail = |message: String| {
            errs.push(Problem {
                at: at.clone(),
                message: format!("hook `{name}`: {message}"),
            })
        };
        if let Err(e) = check_action_name(name) {
            fail(e.replace("action name", "name"));
            continue;
        }
        let mut hook = Hook {
            name: name.clone(),
            run: None,
            on: HookEvent::ALL.to_vec(),
            timeout: DEFAULT_HOOK_TIMEOUT,
        };
        let fields = match body {
            Value::Null => {
                out.push(hook);
                continue;
            }
            Value::Object(fields) => fields,
            other => {
                fail(format!(
                    "expected an object with Run, On and Timeout, found {}",
                    kind(other)
                ));
                continue;
            }
        };
        for (key, value) in fields {
            let Some(key) = HOOK_KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
                fail(format!(
                    "unknown key `{key}` (a hook has Run, On and Timeout)"
                ));
                continue;
            };
            let result = match *key {
                "Run" => script(value).map(|s| hook.run = Some(s)),
                "On" => hook_events(value).map(|on| hook.on = on),
                _ => positive(value).map(|t| hook.timeout = t),
            };
            if let Err(problems) = result {
                for p in problems {
                    fail(format!("{key}: {}", p.message));
                }
            }
        }
        if hook.run.is_none() {
            fail("Run is missing (write the hook as Null to remove an inherited one)".into());
            continue;
        }
        out.push(hook);
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

fn hook_events(v: &Value) -> Parsed<Vec<HookEvent>> {
    let names = strings(v)?;
    let mut out = Vec::new();
    for name in names {
        match HookEvent::KNOWN
            .iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(&name))
        {
            Some(e) => out.push(*e),
            None => {
                let known: Vec<&str> = HookEvent::KNOWN.iter().map(|e| e.as_str()).collect();
                return problem(format!(
                    "unknown event {name:?}; events are {}",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// `lower`'s hooks with `upper`'s replacing those of the same name (and `Null` ones removing
/// them), in the order first written.
fn merge_hooks(upper: &[Hook], lower: &[Hook]) -> Vec<Hook> {
    let mut out: Vec<Hook> = lower.to_vec();
    for h in upper {
        match out.iter_mut().find(|o| o.name == h.name) {
            Some(o) => *o = h.clone(),
            None => out.push(h.clone()),
        }
    }
    out
}

/// An integer from `min` to `max`.
fn bounded_i64(v: &Value, min: i64, max: i64) -> Parsed<i64> {
    match integer(v)? {
        i if (min..=max).contains(&i) => Ok(i),
        i => problem(format!("must be between {min} and {max}, found {i}")),
    }
}

/// A count or size: a whole number, a string with a binary suffix (`64K`, `512M`, `2G`,
/// `1T`), or `infinity` (`unlimited`, `max`) for `u64::MAX`.
fn amount(v: &Value) -> Parsed<u64> {
    let text = match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(_) => {
            return match integer(v)? {
                i if i >= 0 => Ok(i as u64),
                i => problem(format!("must not be negative, found {i}")),
            }
        }
        _ => return expected("a number or a string such as \"512M\" or \"infinity\"", v),
    };
    amount_text(&text).map_or_else(problem, Ok)
}

fn amount_text(text: &str) -> Result<u64, String> {
    if ["infinity", "unlimited", "max"].contains(&text.to_ascii_lowercase().as_str()) {
        return Ok(u64::MAX);
    }
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{text:?}: the suffix must be K, M, G or T")),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| {
        format!("{text:?} is not a whole number, a size such as \"512M\", or \"infinity\"")
    })?;
    n.checked_mul(1u64 << shift)
        .filter(|&b| b < u64::MAX)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `Limit*`: one value for both limits, or `"soft:hard"`; the soft limit may not exceed the
/// hard one.
fn rlimit(v: &Value) -> Parsed<RlimitValue> {
    let (soft, hard) = match v.as_str().and_then(|s| s.split_once(':')) {
        Some((a, b)) => (
            amount_text(a.trim()).map_or_else(problem, Ok)?,
            amount_text(b.trim()).map_or_else(problem, Ok)?,
        ),
        None => {
            let n = amount(v)?;
            (n, n)
        }
    };
    if soft > hard {
        return problem(format!(
            "the soft limit {soft} is above the hard limit {hard}"
        ));
    }
    Ok(RlimitValue { soft, hard })
}

fn nice(v: &Value) -> Parsed<i32> {
    bounded_i64(v, -20, 19).map(|n| n as i32)
}

fn oom_score_adjust(v: &Value) -> Parsed<i32> {
    bounded_i64(v, -1000, 1000).map(|n| n as i32)
}

fn io_class(v: &Value) -> Parsed<IoClass> {
    match string(v)?.to_ascii_lowercase().as_str() {
        "realtime" | "rt" => Ok(IoClass::Realtime),
        "best-effort" | "be" => Ok(IoClass::BestEffort),
        "idle" => Ok(IoClass::Idle),
        _ => problem("must be \"realtime\", \"best-effort\" or \"idle\""),
    }
}

fn io_priority(v: &Value) -> Parsed<u8> {
    bounded_i64(v, 0, 7).map(|n| n as u8)
}

/// `UMask`: octal digits in a string (`"0027"`), as JSON has no octal numbers.
fn umask(v: &Value) -> Parsed<u32> {
    let text = string(v)?;
    match u32::from_str_radix(text.trim(), 8) {
        Ok(m) if m <= 0o777 && !text.trim().is_empty() => Ok(m),
        _ => problem(format!(
            "{text:?} must be octal digits from \"0000\" to \"0777\" (a string: \"0022\")"
        )),
    }
}

/// An absolute path.
fn absolute(v: &Value) -> Parsed<PathBuf> {
    let path = PathBuf::from(non_empty(v)?);
    if path.is_absolute() {
        Ok(path)
    } else {
        problem(format!("{} must be an absolute path", path.display()))
    }
}

/// A variable name as shells take it.
fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 256
}

/// `Environment`: an object of variable names to strings (numbers and booleans are written
/// as text).
fn environment(v: &Value) -> Parsed<Vec<(String, String)>> {
    let Some(map) = v.as_object() else {
        return expected("an object mapping variable names to values", v);
    };
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (name, value) in map {
        let at = Some(name.clone());
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                errs.push(Problem {
                    at,
                    message: format!("{name}: expected a string, found {}", kind(other)),
                });
                continue;
            }
        };
        if !env_name_ok(name) {
            errs.push(Problem {
                at,
                message: format!("{name:?} is not a variable name (letters, digits and _)"),
            });
        } else if text.contains('\0') {
            errs.push(Problem {
                at,
                message: format!("{name}: the value must not contain a NUL byte"),
            });
        } else {
            out.push((name.clone(), text));
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// `EnvironmentFile`: an absolute path; `-/path` when a missing file is no error.
fn env_file(v: &Value) -> Parsed<EnvFile> {
    let text = non_empty(v)?;
    let (optional, path) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let path = absolute(&Value::String(path.to_owned()))?;
    Ok(EnvFile { path, optional })
}

fn memory(v: &Value) -> Parsed<u64> {
    match amount(v)? {
        n if n >= 4096 => Ok(n),
        n => problem(format!("must be at least 4096 bytes (4K), found {n}")),
    }
}

/// `LogMaxSize`: a redirect file is rotated past this size, 4K to 1T.
fn log_size(v: &Value) -> Parsed<u64> {
    match amount(v)? {
        n if (4096..=1 << 40).contains(&n) => Ok(n),
        n if n == u64::MAX => problem("must be a size (Null for no rotation)"),
        n => problem(format!("must be between 4096 bytes (4K) and 1T, found {n}")),
    }
}

/// `LogKeep`: rotated files kept, 1 to 1000.
fn log_keep(v: &Value) -> Parsed<u32> {
    bounded_u32(v, 1, 1000)
}

fn cpu_weight(v: &Value) -> Parsed<u32> {
    bounded_u32(v, 1, 10_000)
}

/// `CPUQuota`: percent of one CPU, as a number or `"50%"`.
fn cpu_quota(v: &Value) -> Parsed<f64> {
    let n = match v {
        Value::String(s) => match s.trim().trim_end_matches('%').trim().parse::<f64>() {
            Ok(n) if n.is_finite() => n,
            _ => return problem(format!("{s:?} is not a percentage such as \"50%\"")),
        },
        _ => number(v)?,
    };
    if n > 0.0 && n <= 100_000.0 {
        Ok(n)
    } else {
        problem(format!(
            "must be more than 0% and at most 100000%, found {n}"
        ))
    }
}

fn tasks_max(v: &Value) -> Parsed<u64> {
    match amount(v)? {
        0 => problem("must be at least 1"),
        n => Ok(n),
    }
}

macro_rules! service_keys {
    ($( $(#[$doc:meta])* $key:ident => $field:ident : $ty:ty = $default:expr, $parse:expr; )*) => {
        /// Service keys as given by one layer (built-in, `ServiceDefaults`, or a service
        /// entry); `None` means "not given here".
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct ServiceLayer {
            $( $(#[$doc])* pub $field: Option<$ty>, )*
        }

        /// The canonical spelling of every service key, in the order of the seed's sample.
        pub const SERVICE_KEYS: &[&str] = &[$(stringify!($key)),*];

        impl ServiceLayer {
            /// Every key set to its built-in default (the values of the seed's sample).
            pub fn builtin() -> ServiceLayer {
                ServiceLayer { $( $field: Some($default), )* }
            }

            /// This layer over `lower`: each key comes from `self` where set, else from
            /// `lower`. Lists and `CustomActions` replace, they do not append; `Notify`
            /// hooks merge by name.
            pub fn over(&self, lower: &ServiceLayer) -> ServiceLayer {
                let mut merged = ServiceLayer {
                    $( $field: self.$field.clone().or_else(|| lower.$field.clone()), )*
                };
                if let (Some(upper), Some(lower)) = (&self.notify, &lower.notify) {
                    merged.notify = Some(merge_hooks(upper, lower));
                }
                merged
            }

            /// Sets the key `key` (a canonical spelling from [`SERVICE_KEYS`]) from a raw value.
            pub(crate) fn set(&mut self, key: &str, value: &Value) -> Parsed<()> {
                $(
                    if key == stringify!($key) {
                        let parse = $parse;
                        self.$field = parse(value)?;
                        return Ok(());
                    }
                )*
                problem(format!("unknown key `{key}`"))
            }

            /// The service this layer describes; keys not set take their built-in default.
            /// No substitution or cross-key checks happen here.
            pub(crate) fn into_service(self, id: ServiceId) -> Service {
                Service { id, $( $field: self.$field.unwrap_or_else(|| $default), )* }
            }
        }
    };
}

const START_SCRIPT: &str = "#!/bin/sh\nexec %(EXEC_START)\n";
const STOP_SCRIPT: &str = "#!/bin/sh\nexec %(EXEC_STOP) $1\n";
const RELOAD_SCRIPT: &str = "#!/bin/sh\nexec %(EXEC_RELOAD) $1\n";

service_keys! {
    Provides => provides: Vec<String> = Vec::new(), plain(strings);
    UUID => uuid: Option<String> = None, nullable(uuid);
    ShortDescription => short_description: Option<String> = None, nullable(string);
    LongDescription => long_description: Option<String> = None, nullable(string);
    Prerequisites => prerequisites: Vec<String> = Vec::new(), plain(strings);
    StartPriority => start_priority: i64 = 0, plain(priority);
    KillTimeout => kill_timeout: f64 = 60.0, plain(kill_timeout);
    MaxConsecutiveFailures => max_consecutive_failures: i64 = -1, plain(count_or_unlimited);
    UserMaxRestarts => user_max_restarts: Option<u32> = None, nullable(max_restarts);
    UserRestartWindow => user_restart_window: Option<f64> = None, nullable(positive);
    UserRateLimit => user_rate_limit: Option<f64> = None, nullable(non_negative);
    RandomizeRateLimit => randomize_rate_limit: bool = false, plain(boolean);
    SetUID => set_uid: IdSpec = IdSpec::Id(0), plain(user_spec);
    SetGID => set_gid: IdSpec = IdSpec::Id(0), plain(group_spec);
    RingbufferSize => ringbuffer_size: u32 = 64, plain(ringbuffer_size);
    ReconnectRetries => reconnect_retries: i64 = 10, plain(count_or_unlimited);
    ExecStart => exec_start: Option<String> = None, nullable(non_empty);
    StartScript => start_script: String = START_SCRIPT.to_owned(), plain(script);
    ExecStop => exec_stop: Option<String> = Some("kill".to_owned()), nullable(non_empty);
    StopScript => stop_script: String = STOP_SCRIPT.to_owned(), plain(script);
    ExecReload => exec_reload: Option<String> = Some("kill -HUP".to_owned()), nullable(non_empty);
    ReloadScript => reload_script: String = RELOAD_SCRIPT.to_owned(), plain(script);
    CustomActions => custom_actions: Vec<CustomAction> = Vec::new(), plain(custom_actions);
    PipeStdoutScript => pipe_stdout_script: Option<String> = None, nullable(script);
    PipeStderrScript => pipe_stderr_script: Option<String> = None, nullable(script);
    RedirectStdout => redirect_stdout: Option<PathBuf> = None, nullable(redirect_path);
    RedirectStderr => redirect_stderr: Option<PathBuf> = None, nullable(redirect_path);
    InitialState => initial_state: InitialState = InitialState::Stopped, plain(initial_state);
    UnconfigureOnFileRemoval => unconfigure_on_file_removal: bool = false, plain(boolean);
    PreferBuddyStateForStopped => prefer_buddy_state_for_stopped: bool = false, plain(boolean);
    PreferBuddyStateForRunning => prefer_buddy_state_for_running: bool = true, plain(boolean);
    HealthCheck => health_check: Option<String> = None, nullable(script);
    HealthInterval => health_interval: f64 = 30.0, plain(positive);
    HealthTimeout => health_timeout: f64 = 10.0, plain(positive);
    HealthStartPeriod => health_start_period: f64 = 0.0, plain(non_negative);
    HealthRetries => health_retries: u32 = 3, plain(health_retries);
    HealthAction => health_action: HealthAction = HealthAction::Restart, plain(health_action);
    Readiness => readiness: Readiness = Readiness::None, plain(readiness);
    ReadyTimeout => ready_timeout: Option<f64> = Some(90.0), nullable(positive);
    RestartBackoff => restart_backoff: f64 = 1.0, plain(backoff);
    RestartDelayMax => restart_delay_max: f64 = 300.0, plain(positive);
    FailedRetryAfter => failed_retry_after: Option<f64> = None, nullable(positive);
    Notify => notify: Vec<Hook> = Vec::new(), plain(hooks);
    WorkingDirectory => working_directory: PathBuf = PathBuf::from("/"), plain(absolute);
    Environment => environment: Vec<(String, String)> = Vec::new(), plain(environment);
    EnvironmentFile => environment_file: Option<EnvFile> = None, nullable(env_file);
    LimitNOFILE => limit_nofile: Option<RlimitValue> = None, nullable(rlimit);
    LimitNPROC => limit_nproc: Option<RlimitValue> = None, nullable(rlimit);
    LimitCORE => limit_core: Option<RlimitValue> = None, nullable(rlimit);
    LimitAS => limit_as: Option<RlimitValue> = None, nullable(rlimit);
    LimitMEMLOCK => limit_memlock: Option<RlimitValue> = None, nullable(rlimit);
    LimitSTACK => limit_stack: Option<RlimitValue> = None, nullable(rlimit);
    LimitCPU => limit_cpu: Option<RlimitValue> = None, nullable(rlimit);
    LimitFSIZE => limit_fsize: Option<RlimitValue> = None, nullable(rlimit);
    Nice => nice: Option<i32> = None, nullable(nice);
    IOSchedulingClass => io_scheduling_class: Option<IoClass> = None, nullable(io_class);
    IOSchedulingPriority => io_scheduling_priority: Option<u8> = None, nullable(io_priority);
    OOMScoreAdjust => oom_score_adjust: Option<i32> = None, nullable(oom_score_adjust);
    UMask => umask: Option<u32> = None, nullable(umask);
    NoNewPrivileges => no_new_privileges: bool = false, plain(boolean);
    MemoryMax => memory_max: Option<u64> = None, nullable(memory);
    MemoryHigh => memory_high: Option<u64> = None, nullable(memory);
    CPUWeight => cpu_weight: Option<u32> = None, nullable(cpu_weight);
    CPUQuota => cpu_quota: Option<f64> = None, nullable(cpu_quota);
    TasksMax => tasks_max: Option<u64> = None, nullable(tasks_max);
    LogMaxSize => log_max_size: Option<u64> = None, nullable(log_size);
    LogKeep => log_keep: u32 = 10, plain(log_keep);
    LogTimestamps => log_timestamps: bool = false, plain(boolean);
}

/// The canonical spelling of a service key written in any case.
pub fn canonical_key(key: &str) -> Option<&'static str> {
    SERVICE_KEYS
        .iter()
        .copied()
        .find(|k| k.eq_ignore_ascii_case(key))
}

/// Keys longer than this are no one's typo of a real key (the longest is 26 characters): they
/// get no suggestion, and messages show only their start.
pub const MAX_KEY_SHOWN: usize = 64;

/// The known key closest to `key`, when one is close enough to be a likely typo. The edit
/// distance costs the product of the lengths: a key of a megabyte is not compared at all.
pub fn did_you_mean(key: &str, known: &[&'static str]) -> Option<&'static str> {
    closest(key, known.iter().copied())
}

/// The candidate closest to `word` (case-insensitive), when one is close enough to be a likely
/// typo of it (one edit away, or 70% alike); words longer than `MAX_KEY_SHOWN` characters are not
/// compared.
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    if word.chars().count() > MAX_KEY_SHOWN {
        return None;
    }
    let word = word.to_lowercase();
    candidates
        .filter(|c| c.len() <= 4 * MAX_KEY_SHOWN)
        .map(|c| {
            let c_low = c.to_lowercase();
            // One typo is a likely one even in a short word (`wbe` for `web`).
            let one = strsim::damerau_levenshtein(&word, &c_low) <= 1;
            let score = strsim::normalized_damerau_levenshtein(&word, &c_low);
            (if one { score.max(0.7) } else { score }, c)
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_matches_the_seed_and_resolves() {
        let s = ServiceLayer::builtin().into_service(ServiceId::parse("x").expect("id"));
        assert_eq!(s.kill_timeout, 60.0);
        assert_eq!(s.max_consecutive_failures, -1);
        assert_eq!(s.exec_stop.as_deref(), Some("kill"));
        assert!(s.prefer_buddy_state_for_running);
        assert_eq!(SERVICE_KEYS.len(), 68);
        assert_eq!(canonical_key("setuid"), Some("SetUID"));
    }

    #[test]
    fn null_resets_nullable_and_skips_plain_keys() {
        let mut l = ServiceLayer::default();
        l.set("ExecStop", &Value::Null).expect("null");
        l.set("KillTimeout", &Value::Null).expect("null");
        assert_eq!(l.exec_stop, Some(None));
        assert_eq!(l.kill_timeout, None);
        let merged = l.over(&ServiceLayer::builtin());
        assert_eq!(merged.exec_stop, Some(None));
        assert_eq!(merged.kill_timeout, Some(60.0));
    }

    #[test]
    fn value_checks() {
        let mut l = ServiceLayer::default();
        let msg = |r: Parsed<()>| r.expect_err("should fail")[0].message.clone();
        assert_eq!(
            msg(l.set("KillTimeout", &json!("5"))),
            "expected a number, found a string"
        );
        assert!(msg(l.set("RingbufferSize", &json!(1))).contains("between 2 and"));
        assert!(msg(l.set("StartPriority", &json!(1.5))).contains("integer"));
        assert!(msg(l.set("UserRestartWindow", &json!(0))).contains("greater than 0"));
        assert!(msg(l.set("InitialState", &json!("up"))).contains("stopped"));
        assert!(msg(l.set("RedirectStdout", &json!("../x"))).contains("leaves the run directory"));
        l.set("RedirectStdout", &json!("log/out"))
            .expect("relative");
        l.set("RedirectStderr", &json!("/var/log/x/../y"))
            .expect("absolute");
        l.set("SetUID", &json!("1000")).expect("digits");
        assert_eq!(l.set_uid, Some(IdSpec::Id(1000)));
        l.set("SetGID", &json!("root")).expect("name");
        assert_eq!(l.set_gid, Some(IdSpec::Name("root".into())));
        assert!(l.set("SetUID", &json!(-1)).is_err());
        l.set("InitialState", &json!("RUNNING"))
            .expect("case-insensitive");
        l.set("UUID", &json!("{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}"))
            .expect("braced uuid");
        assert_eq!(
            l.uuid,
            Some(Some("6ba7b810-9dad-11d1-80b4-00c04fd430c8".into()))
        );
        l.set("StartPriority", &json!(5.0)).expect("integral float");
        assert_eq!(l.start_priority, Some(5));
    }

    #[test]
    fn limits() {
        let mut l = ServiceLayer::default();
        let msg = |r: Parsed<()>| r.expect_err("should fail")[0].message.clone();
        l.set("LimitNOFILE", &json!(4096)).expect("a number");
        assert_eq!(
            l.limit_nofile,
            Some(Some(RlimitValue {
                soft: 4096,
                hard: 4096
            }))
        );
        l.set("LimitNOFILE", &json!("1024:infinity"))
            .expect("soft:hard");
        assert_eq!(
            l.limit_nofile,
            Some(Some(RlimitValue {
                soft: 1024,
                hard: u64::MAX
            }))
        );
        l.set("LimitAS", &json!("2G")).expect("a size");
        assert_eq!(
            l.limit_as,
            Some(Some(RlimitValue {
                soft: 2 << 30,
                hard: 2 << 30
            }))
        );
        assert!(msg(l.set("LimitCORE", &json!("9:1"))).contains("above the hard"));
        assert!(msg(l.set("LimitCORE", &json!(-1))).contains("negative"));
        assert!(msg(l.set("LimitCORE", &json!("99999999999T"))).contains("too large"));
        assert!(msg(l.set("LimitCORE", &json!("5Q"))).contains("suffix"));
        assert!(msg(l.set("Nice", &json!(20))).contains("between -20 and 19"));
        assert!(msg(l.set("OOMScoreAdjust", &json!(-1001))).contains("-1000"));
        l.set("UMask", &json!("0027")).expect("octal");
        assert_eq!(l.umask, Some(Some(0o027)));
        assert!(msg(l.set("UMask", &json!("0999"))).contains("octal"));
        assert!(msg(l.set("UMask", &json!(22))).contains("string"));
        assert!(msg(l.set("WorkingDirectory", &json!("srv"))).contains("absolute"));
        l.set("EnvironmentFile", &json!("-/etc/default/x"))
            .expect("optional");
        assert_eq!(
            l.environment_file,
            Some(Some(EnvFile {
                path: "/etc/default/x".into(),
                optional: true
            }))
        );
        l.set("Environment", &json!({"A": "1", "B_2": 3}))
            .expect("env");
        assert_eq!(
            l.environment,
            Some(vec![("A".into(), "1".into()), ("B_2".into(), "3".into())])
        );
        assert!(msg(l.set("Environment", &json!({"1A": "x"}))).contains("variable name"));
        assert!(msg(l.set("MemoryMax", &json!(100))).contains("4096"));
        assert!(msg(l.set("LogMaxSize", &json!(100))).contains("4096"));
        assert!(msg(l.set("LogMaxSize", &json!("infinity"))).contains("Null"));
        assert!(msg(l.set("LogMaxSize", &json!("2T"))).contains("1T"));
        assert!(msg(l.set("LogKeep", &json!(0))).contains("between 1 and 1000"));
        l.set("LogMaxSize", &json!("10M")).expect("size");
        assert_eq!(l.log_max_size, Some(Some(10 << 20)));
        l.set("MemoryMax", &json!("64M")).expect("memory");
        assert_eq!(l.memory_max, Some(Some(64 << 20)));
        l.set("CPUQuota", &json!("50%")).expect("percent");
        assert_eq!(l.cpu_quota, Some(Some(50.0)));
        assert!(msg(l.set("CPUQuota", &json!(0))).contains("more than 0"));
        assert!(msg(l.set("TasksMax", &json!(0))).contains("at least 1"));
        assert!(msg(l.set("IOSchedulingClass", &json!("fast"))).contains("best-effort"));
        assert!(msg(l.set("IOSchedulingPriority", &json!(8))).contains("between 0 and 7"));
    }

    #[test]
    fn action_names() {
        assert!(check_action_name("backup-db.v2").is_ok());
        for bad in [
            "",
            "07",
            "..",
            "-x",
            "a/b",
            "Start",
            "pipe_stdout",
            &"x".repeat(33),
        ] {
            assert!(check_action_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("KillTimout", SERVICE_KEYS),
            Some("KillTimeout")
        );
        assert_eq!(did_you_mean("execstrat", SERVICE_KEYS), Some("ExecStart"));
        assert_eq!(did_you_mean("Frobnicate", SERVICE_KEYS), None);
    }
}
