//! Text output for people: aligned columns, and lines that fit the terminal.
//!
//! Columns are padded to their widest cell with two spaces between them, the last one never
//! padded. Lines are cut to the terminal's width only when stdout is a terminal; piped
//! output and `--json` are never cut, so nothing is lost to a script.

use std::io::Write;

/// Prints `rows` under `header`, aligned.
pub fn print(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", fit(line.trim_end()))?;
    }
    Ok(())
}

/// `line` cut to the terminal's width (with `…`) when stdout is a terminal; else unchanged.
pub fn fit(line: &str) -> String {
    match terminal_width() {
        Some(w) if line.chars().count() > w && w > 1 => {
            let mut cut: String = line.chars().take(w - 1).collect();
            cut.push('…');
            cut
        }
        _ => line.to_owned(),
    }
}

/// The width of the terminal on stdout, if stdout is one.
fn terminal_width() -> Option<usize> {
    use std::sync::OnceLock;
    static WIDTH: OnceLock<Option<usize>> = OnceLock::new();
    *WIDTH.get_or_init(|| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own; it fails (ENOTTY)
        // when stdout is not a terminal, and then nothing is cut.
        let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
        (r == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["web".to_owned(), "running".to_owned(), "x".to_owned()],
            vec!["database".to_owned(), "-".to_owned(), "".to_owned()],
        ];
        super::print(&mut out, &["SERVICE", "STATE", "NOTE"], &rows).expect("print");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "SERVICE   STATE    NOTE\nweb       running  x\ndatabase  -\n"
        );
    }
}
