//! The installed man pages: upkeeper(8), upkctl(1), uptop(1) and upkeeper.conf(5) are where
//! `man` looks, format without a warning (`groff -ww`), have EXIT STATUS and EXAMPLES, and
//! say everything the programs and the key tables know: every option `--help` lists, every
//! configuration key. upkeeper.conf(5) is what man/conf5.py makes of docs/configuration.md.

use super::{install, repo};
use std::path::Path;
use std::process::Command;
use upk_testkit::{bin, Sandbox};

/// The page, read as `man` would format it (groff warnings are failures).
fn formatted(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-ww", "-Tutf8"])
        .arg(page)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("groff (Debian's groff-base; .ci/run installs it)");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.is_empty(),
        "{}: {warnings}",
        page.display()
    );
    // groff's terminal output overstrikes bold: keep the letters.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain.replace(['\u{2010}', '\u{2212}'], "-")
}

/// Every `--long` option a program's help lists (its subcommands' too).
fn long_options(program: &Path, subcommands: &[&str]) -> Vec<String> {
    let mut options = Vec::new();
    let mut helps = vec![vec!["--help".to_string()]];
    helps.extend(
        subcommands
            .iter()
            .map(|s| vec![s.to_string(), "--help".into()]),
    );
    for args in helps {
        let out = Command::new(program).args(&args).output().expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '=') {
            let word = word.trim_end_matches(|c: char| !c.is_alphanumeric());
            if word.starts_with("--") && word.len() > 2 && !options.iter().any(|o| o == word) {
                options.push(word.to_string());
            }
        }
    }
    options
}

#[test]
fn every_man_page_is_installed_formats_cleanly_and_says_what_the_programs_know() {
    let sb = Sandbox::new();
    let dest = sb.path().join("dest");
    install(&sb, &dest);
    let man = dest.join("usr/share/man");
    let pages = [
        (
            "man8/upkeeper.8",
            Some((bin("upkeeper"), vec!["run", "check", "render"])),
        ),
        ("man1/uptop.1", Some((bin("uptop"), vec![]))),
        ("man1/upkctl.1", None),
        ("man5/upkeeper.conf.5", None),
    ];
    for (page, program) in pages {
        let text = formatted(&man.join(page));
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "SEE ALSO"] {
            assert!(
                text.contains(&format!("\n{section}\n")),
                "{page} has no {section}:\n{text}"
            );
        }
        if page != "man5/upkeeper.conf.5" {
            assert!(
                text.contains("\nEXIT STATUS\n"),
                "{page} has no EXIT STATUS:\n{text}"
            );
        }
        if let Some((program, subcommands)) = program {
            let options = long_options(&program, &subcommands);
            assert!(options.iter().any(|o| o == "--config"), "{options:?}");
            for option in options {
                assert!(
                    text.contains(&option),
                    "{page} does not mention {option}:\n{text}"
                );
            }
        }
    }
    // Every key the loader knows is in upkeeper.conf(5), and the page is up to date.
    let conf = formatted(&man.join("man5/upkeeper.conf.5"));
    let keys = upk_core::config::CONTROLLER_KEYS
        .iter()
        .chain(upk_core::config::SERVICE_KEYS);
    for key in keys {
        assert!(
            conf.contains(key),
            "upkeeper.conf(5) does not describe {key}"
        );
    }
    let check = Command::new("python3")
        .arg(repo().join("man/conf5.py"))
        .arg("--check")
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // upkctl's subcommands keep pages of their own.
    assert!(man.join("man1/upkctl-status.1").is_file());
}
