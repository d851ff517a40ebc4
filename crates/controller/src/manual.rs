//! The parts of upkeeper(8) that clap cannot know: signals, files, exit status, examples.
//! `upkeeper man` prints the page ([`upk_core::manpage`]); install.sh installs it. The exit
//! codes are docs/exit-codes.md's, the files docs/configuration.md's.

use upk_core::manpage::Section;

/// upkeeper(8)'s written sections, in order.
pub const SECTIONS: &[Section] = &[
    (
        "OPERATION",
        r#"
.B upkeeper run
(the default) loads the controller file and every service file in
.BR SvcConfigPath ,
renders each service's run directory under
.BR SvcRunPath ,
starts one
.B upk_buddy
per service in start-up order (Prerequisites, Provides, StartPriority), and writes every
event the buddies record and every command a client gives into the audit store,
.IR StateDir /upkeeper.db
(SQLite). Clients (\fBupkctl\fR(1), \fBuptop\fR(1)) talk to it on
.IR StateDir /upkeeper.sock;
what a caller may do comes from its credentials (root, the controller's user,
.BR ControlGroup ,
.BR ReadGroup ).
Changes in
.B SvcConfigPath
are applied as they happen (inotify), a file with an error is reported and skipped, and the
old definitions stay in force.
.PP
The buddies own their services: the controller can be stopped, killed or upgraded without
disturbing them, and the next one adopts every running buddy and receives the records it
kept meanwhile, exactly once.
"#,
    ),
    (
        "SIGNALS",
        r#"
.TP
.BR SIGTERM ", " SIGINT
End the controller only: buddies and services keep running. To stop everything, run
.B upkctl stop \-\-all \-\-wait
first.
"#,
    ),
    (
        "FILES",
        r#"
.TP
.I /etc/upkeeper/upkeeper.conf
The controller file (root's default;
.I $XDG_CONFIG_HOME/upkeeper/upkeeper.conf
for other users). See \fBupkeeper.conf\fR(5).
.TP
.I /etc/upkeeper/upkeeper.d/
.BR SvcConfigPath :
service files,
.I *.conf
and
.IR *.json5 ,
read in name order.
.TP
.I /var/lib/upkeeper/
.BR StateDir :
.I upkeeper.db
(the audit store),
.I upkeeper.sock
(the client socket),
.I upkeeper.lock
(one controller per state directory).
.TP
.I /run/upkeeper/buddies/ID/
.BR SvcRunPath :
one service's run directory: settings.json, scripts/, actions/, log/, status, buddy.sock.
"#,
    ),
    (
        "EXIT STATUS",
        r#"
.TP
.B 0
.BR check :
every file is valid;
.BR render :
every service rendered;
.BR run :
ended by SIGTERM or SIGINT.
.TP
.B 100
A permanent failure: a usage error, an invalid or unreadable controller file, an error found by
.BR check ,
or another controller holding
.IR StateDir /upkeeper.lock.
Starting again will not help until something is fixed.
.TP
.B 111
A temporary failure: a system call failed (the socket, signals, the store, rendering).
Trying again may work.
"#,
    ),
    (
        "EXAMPLES",
        r#"
Validate a service file before installing it:
.PP
.nf
.RS
upkeeper check /etc/upkeeper/upkeeper.d/web.conf
.RE
.fi
.PP
Run the controller in the foreground with a private configuration:
.PP
.nf
.RS
upkeeper \-\-config ./upkeeper.conf run
.RE
.fi
.PP
Upgrade the controller alone under OpenRC (services keep running):
.PP
.nf
.RS
rc\-service upkeeper respawn
.RE
.fi
"#,
    ),
    (
        "SEE ALSO",
        r#"
\fBupkctl\fR(1), \fBuptop\fR(1), \fBupkeeper.conf\fR(5), \fBopenrc\-run\fR(8).
The documentation in
.I /usr/share/doc/upkeeper/
(configuration.md, controller.md, audit.md, exit-codes.md).
"#,
    ),
];
