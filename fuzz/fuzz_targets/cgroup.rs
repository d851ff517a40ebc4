//! The cgroup readers (core::cgroup) and the EnvironmentFile parser (buddy::launch) on
//! arbitrary text: they return, never panic, and what they return holds together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upk_core::cgroup::{self, Hierarchies};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line is the "own cgroup" text, the rest the mountinfo.
    let (own, mounts) = text.split_once('\n').unwrap_or((&text, ""));
    let h = Hierarchies::from_texts(mounts, own);
    for (ctl, dir) in &h.v1 {
        assert!(!ctl.is_empty());
        assert_eq!(h.v1_base(ctl), Some(dir.as_path()));
    }
    let _ = cgroup::parse_membership(&text);
    let _ = cgroup::populated(&text);
    let _ = cgroup::keyed(&text, "usage_usec");
    let _ = cgroup::number(&text);
    let mut n = [0u8; 8];
    n[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
    let _ = cgroup::bytes_text(u64::from_le_bytes(n));
    if let Ok(pairs) = upk_buddy::launch::parse_env(&text) {
        for (k, v) in pairs {
            assert!(!k.is_empty() && !k.contains('=') && !v.contains('\0'));
        }
    }
});
