//! What a death keeps of a file's end (`upk_core::death::last_lines`), and the buddy's own
//! logger's argument parser: any bytes, any budget; the bounds always hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upk_core::death::{last_lines, LINE_MAX};

fuzz_target!(|data: &[u8]| {
    let Some((head, bytes)) = data.split_first_chunk::<3>() else {
        return;
    };
    let lines = usize::from(head[0] % 32);
    let budget0 = usize::from(u16::from_le_bytes([head[1], head[2]]));
    for whole in [false, true] {
        let mut budget = budget0;
        let kept = last_lines(bytes, whole, lines, &mut budget);
        assert!(kept.len() <= lines);
        let used: usize = kept.iter().map(|l| l.len() + 1).sum();
        assert_eq!(used, budget0 - budget, "the budget counts what was kept");
        assert!(kept.iter().all(|l| l.len() <= LINE_MAX + '…'.len_utf8() && !l.contains('\n')));
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let args: Vec<String> = text.split(' ').map(str::to_owned).collect();
        if let Some(r) = upk_buddy::rotate::Rotation::parse(&args) {
            assert!(r.max_size >= 1 && (1..=1000).contains(&r.keep));
            assert_eq!(upk_buddy::rotate::Rotation::parse(&r.args()[1..]), Some(r));
        }
    }
});
