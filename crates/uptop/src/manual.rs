//! The parts of uptop(1) that clap cannot know: the keys, the highlight rule, exit status and
//! examples (docs/uptop.md says the same at length). `uptop --man` prints the page
//! ([`upk_core::manpage`]); install.sh installs it.

use upk_core::manpage::Section;

/// uptop(1)'s written sections, in order.
pub const SECTIONS: &[Section] = &[
    (
        "THE SCREEN",
        r#"
One row per configured service: SERVICE, STATE (the buddy's), WANT (the desired state),
PID, UPTIME, RESTARTS/1h with a sparkline of twelve five\-minute slices, LAST EXIT, HEALTH,
CPU% and MEM. STATE is red when it is not what WANT asks for (want up and not running,
ready or stopping on the way to a restart; want down and running; want once and failed).
The header says whether the controller is connected, and counts the services per state.
uptop does not poll: it subscribes to the controller's events and asks for the list after
each burst. When the controller goes away the rows dim and uptop reconnects, replaying
what it missed.
"#,
    ),
    (
        "KEYS",
        r#"
.TP
.BR "\(ua \(da j k" ", " "PgUp PgDn" ", " "g G"
Select a service.
.TP
.B s
Sort by the next column;
.B I
reverses the order.
.TP
.B /
Filter rows by id or state;
.B Esc
clears the filter.
.TP
.BR Enter ", " d
Open or close the detail pane: the service's file, restarts, figures over 24 hours and its
latest events.
.TP
.B S T R L
Start, stop, restart or reload the selected service, after a
.B y
to the question. Needs control access; the command is audited like any other.
.TP
.B ?
The keys and the highlight rule.
.TP
.BR q ", " Ctrl\-C
Quit.
"#,
    ),
    (
        "ENVIRONMENT",
        r#"
.TP
.B UPKEEPER_SOCKET
The controller's socket, when neither
.B \-\-socket
nor
.B \-\-config
is given.
"#,
    ),
    (
        "EXIT STATUS",
        r#"
.TP
.B 0
Ended by
.B q
or Ctrl\-C.
.TP
.B 1
It could not start (no terminal, an unreadable controller file) or the terminal failed.
.TP
.B 128+N
Ended by signal N (143 for SIGTERM). The terminal is restored on every way out.
"#,
    ),
    (
        "EXAMPLES",
        r#"
.nf
.RS
uptop
uptop \-\-config demo/upkeeper.conf
uptop \-\-socket /var/lib/upkeeper/upkeeper.sock
.RE
.fi
"#,
    ),
    (
        "SEE ALSO",
        r#"
\fBupkctl\fR(1), \fBupkeeper\fR(8), \fBupkeeper.conf\fR(5).
"#,
    ),
];
