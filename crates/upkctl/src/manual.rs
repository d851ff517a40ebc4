//! The parts of upkctl(1) that clap cannot know: exit status, environment and examples
//! (docs/exit-codes.md and docs/upkctl.md say the same at length). `upkctl man` prints the
//! page ([`upk_core::manpage`]); the subcommands' pages are clap's alone.

use upk_core::manpage::Section;

/// upkctl(1)'s written sections, in order.
pub const SECTIONS: &[Section] = &[
    (
        "ENVIRONMENT",
        r#"
.TP
.B UPKEEPER_SOCKET
The controller's socket, when
.B \-\-config
is not given.
.TP
.B UPKCTL_SSH
With
.BR \-H :
the ssh program, when
.B \-\-ssh
is not given (default
.BR ssh ).
.TP
.B UPKCTL_REMOTE
With
.BR \-H :
upkctl's path on the remote host, when
.B \-\-remote\-upkctl
is not given (default
.BR upkctl ).
.TP
.B SSH_CONNECTION
Read by the hidden
.B upkctl bridge
that
.B \-H
runs on the remote host: the ssh client's address and port become the origin of the commands
in the audit.
"#,
    ),
    (
        "EXIT STATUS",
        r#"
When one command acts on several services, the code is that of the first one that failed.
.TP
.B 0
It worked (also
.B status
answered from the status files while the controller is down, said on stderr).
.TP
.B 1
.BR is\-active / is\-failed :
the answer is no. Otherwise the service was reached but the command did not work: the buddy
refused, a reload or action exited non\-zero, or
.B \-\-wait
saw it fail.
.TP
.B 2
No such service (or action, or user).
.TP
.B 3
Refused: the caller's uid and groups do not give the access the request needs.
.TP
.B 4
The controller cannot be reached, or the connection was lost; with
.BR \-H ,
also ssh failing (its exit status and last line on stderr are said).
.TP
.B 5
No answer within
.BR \-\-timeout ,
or
.B \-\-wait
did not see the new state in time.
.TP
.B 6
Invalid configuration, or
.B check
found an error.
.TP
.B 100
A usage error.
.TP
.B 111
A temporary failure: the buddy is not connected yet, the store cannot answer.
"#,
    ),
    (
        "EXAMPLES",
        r#"
.nf
.RS
upkctl status                      # every service at a glance
upkctl restart web \-\-wait          # returns once web runs again
upkctl why web                     # why it last died, and what came before
upkctl history web \-\-since 03:00   # what happened since three
upkctl audit \-\-user alice          # what alice asked for
upkctl stop \-\-all \-\-wait           # before stopping the controller
upkctl is\-active web && echo up
upkctl \-H ops@web1 restart api     # on web1, over ssh, as ops there
.RE
.fi
"#,
    ),
    (
        "SEE ALSO",
        r#"
\fBupkeeper\fR(8), \fBuptop\fR(1), \fBupkeeper.conf\fR(5), and one page per subcommand,
\fBupkctl\-status\fR(1) and so on.
"#,
    ),
];
