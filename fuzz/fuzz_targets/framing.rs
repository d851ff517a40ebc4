//! Shared by the two protocol targets: cut the input into reads as its first byte says, feed
//! them to a `LineBuf`, and check that the lines it returns are exactly the input's lines.

use upk_core::proto::{FrameError, LineBuf, MAX_LINE};

/// Every complete line of `data` as the splitter returns it, or `None` if it refused one.
pub fn lines(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (cut, data) = data.split_first()?;
    let cut = usize::from(*cut).max(1);
    let mut buf = LineBuf::default();
    let mut out = Vec::new();
    for piece in data.chunks(cut) {
        buf.push(piece);
        loop {
            match buf.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= MAX_LINE && !line.contains(&b'\n'));
                    out.push(line);
                }
                Ok(None) => break,
                Err(FrameError::TooLong) => return None,
            }
        }
    }
    // Nothing is lost or invented: the lines, their newlines and what is pending are the input.
    let mut again: Vec<u8> = out
        .iter()
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    assert_eq!(buf.pending(), data.len() - again.len());
    again.extend(buf.into_bytes());
    assert_eq!(again, data);
    Some(out)
}
