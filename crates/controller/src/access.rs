//! Who a client is and what it may do: the peer's credentials (SO_PEERCRED, its groups and
//! command line from `/proc`) and the access policy over them.
//!
//! The policy is a pure function ([`access`]): root, the controller's own user and members of
//! `ControlGroup` (primary or supplementary) may control; members of `ReadGroup` may read and
//! subscribe; anyone else may only say `hello`. Control includes read. The server decides each
//! connection's access once, at accept.

use std::io::Read;
use std::os::unix::net::UnixStream;
use upk_core::client::Access;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Uid (SO_PEERCRED).
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Pid.
    pub pid: i32,
    /// Supplementary groups (`/proc/PID/status`).
    pub groups: Vec<u32>,
    /// Command line (`/proc/PID/cmdline`, arguments joined by spaces).
    pub cmdline: String,
    /// Where it says it comes from (its `hello`'s `origin`, checked when it was said): what
    /// a relay such as `upkctl bridge` reported, never an input to [`access`].
    pub origin: Option<String>,
}

/// Most bytes of a client's command line kept for its audit rows.
pub const CMDLINE_MOST: u64 = 64 * 1024;

impl Peer {
    /// The credentials of the process at the other end of `stream`.
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred =
            nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
        let pid = cred.pid();
        let proc_file = |f: &str, most: u64| {
            // One read for the usual sizes (std's read of a /proc file starts at 32 bytes
            // and doubles); at most `most` bytes of what a client process makes of it.
            let mut out = Vec::with_capacity(4096);
            let read = std::fs::File::open(format!("/proc/{pid}/{f}"))
                .and_then(|f| f.take(most).read_to_end(&mut out));
            read.map(|_| out).unwrap_or_default()
        };
        // Its groups: as many as a process may have (65,536 of up to 11 characters).
        let status = String::from_utf8_lossy(&proc_file("status", 1 << 20)).into_owned();
        let groups = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let cmdline = proc_file("cmdline", CMDLINE_MOST)
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups,
            cmdline,
            origin: None,
        })
    }

    /// Who asked, for the records a command causes.
    pub fn cause(&self) -> String {
        let mut what: String = self.cmdline.chars().take(200).collect();
        if what.is_empty() {
            what = "a client".into();
        }
        let via = self
            .origin
            .as_ref()
            .map(|o| format!(", via {o}"))
            .unwrap_or_default();
        format!("{what} (uid {}, pid {}{via})", self.uid, self.pid)
    }
}

/// Who may do what.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The controller's effective uid: its own user may do everything.
    pub own_uid: u32,
    /// `ControlGroup`.
    pub control_group: Option<u32>,
    /// `ReadGroup`.
    pub read_group: Option<u32>,
}

impl Policy {
    /// Who has `needed` access, for a refusal to say (numbers only: a name lookup could block
    /// the loop): `root, uid 500 and group 1001 (ControlGroup) have it`, and which group keys
    /// are not set.
    pub fn granted_to(&self, needed: Access) -> String {
        let mut who = vec!["root".to_owned()];
        if self.own_uid != 0 {
            who.push(format!("uid {}", self.own_uid));
        }
        let groups = match needed {
            Access::Control => vec![("ControlGroup", self.control_group)],
            _ => vec![
                ("ReadGroup", self.read_group),
                ("ControlGroup", self.control_group),
            ],
        };
        let unset: Vec<&str> = groups
            .iter()
            .filter(|(_, g)| g.is_none())
            .map(|(key, _)| *key)
            .collect();
        who.extend(
            groups
                .iter()
                .filter_map(|(key, g)| g.map(|g| format!("group {g} ({key})"))),
        );
        let last = who.pop().unwrap_or_default();
        let mut text = if who.is_empty() {
            format!("{last} has it")
        } else {
            format!("{} and {last} have it", who.join(", "))
        };
        match unset.as_slice() {
            [] => {}
            [one] => text.push_str(&format!(" ({one} is not set)")),
            more => text.push_str(&format!(" ({} are not set)", more.join(" and "))),
        }
        text
    }

    /// The access `peer` gets ([`access`]).
    pub fn access(&self, peer: &Peer) -> Access {
        access(self, peer.uid, peer.gid, &peer.groups)
    }
}

/// The access of a caller with `uid`, primary `gid` and supplementary `groups` under `policy`.
pub fn access(policy: &Policy, uid: u32, gid: u32, groups: &[u32]) -> Access {
    let member = |group: Option<u32>| group.is_some_and(|g| gid == g || groups.contains(&g));
    if uid == 0 || uid == policy.own_uid || member(policy.control_group) {
        Access::Control
    } else if member(policy.read_group) {
        Access::Read
    } else {
        Access::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_who_has_the_access() {
        let p = Policy {
            own_uid: 500,
            control_group: Some(1001),
            read_group: None,
        };
        assert_eq!(
            p.granted_to(Access::Control),
            "root, uid 500 and group 1001 (ControlGroup) have it"
        );
        assert_eq!(
            p.granted_to(Access::Read),
            "root, uid 500 and group 1001 (ControlGroup) have it (ReadGroup is not set)"
        );
        let root = Policy {
            own_uid: 0,
            control_group: None,
            read_group: None,
        };
        assert_eq!(
            root.granted_to(Access::Read),
            "root has it (ReadGroup and ControlGroup are not set)"
        );
    }

    const POLICY: Policy = Policy {
        own_uid: 500,
        control_group: Some(20),
        read_group: Some(30),
    };

    #[test]
    fn root_and_the_controllers_own_user_control_whatever_their_groups() {
        assert_eq!(access(&POLICY, 0, 0, &[]), Access::Control);
        assert_eq!(access(&POLICY, 500, 99, &[]), Access::Control);
        let none = Policy {
            control_group: None,
            read_group: None,
            ..POLICY
        };
        assert_eq!(access(&none, 0, 0, &[]), Access::Control);
        assert_eq!(access(&none, 500, 500, &[]), Access::Control);
    }

    #[test]
    fn groups_count_as_primary_or_supplementary() {
        assert_eq!(access(&POLICY, 1000, 20, &[]), Access::Control);
        assert_eq!(access(&POLICY, 1000, 1000, &[7, 20]), Access::Control);
        assert_eq!(access(&POLICY, 1000, 30, &[]), Access::Read);
        assert_eq!(access(&POLICY, 1000, 1000, &[30]), Access::Read);
        assert_eq!(
            access(&POLICY, 1000, 30, &[20]),
            Access::Control,
            "control wins over read"
        );
    }

    #[test]
    fn everyone_else_gets_nothing_and_unset_groups_match_nobody() {
        assert_eq!(access(&POLICY, 1000, 1000, &[1, 2, 3]), Access::None);
        let none = Policy {
            control_group: None,
            read_group: None,
            ..POLICY
        };
        assert_eq!(access(&none, 1000, 20, &[30]), Access::None);
        let read_only = Policy {
            control_group: None,
            ..POLICY
        };
        assert_eq!(access(&read_only, 1000, 20, &[30]), Access::Read);
    }

    #[test]
    fn the_cause_names_the_caller_and_is_bounded() {
        let peer = Peer {
            uid: 7,
            pid: 42,
            cmdline: "x".repeat(1000),
            ..Peer::default()
        };
        let cause = peer.cause();
        assert!(cause.ends_with("(uid 7, pid 42)"), "{cause}");
        assert!(cause.len() < 250);
        assert_eq!(Peer::default().cause(), "a client (uid 0, pid 0)");
        let remote = Peer {
            uid: 7,
            pid: 42,
            cmdline: "upkctl bridge".into(),
            origin: Some("ssh 10.1.2.3:40404".into()),
            ..Peer::default()
        };
        assert_eq!(
            remote.cause(),
            "upkctl bridge (uid 7, pid 42, via ssh 10.1.2.3:40404)"
        );
    }
}
