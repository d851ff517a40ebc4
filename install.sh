#!/bin/sh
# Installs upkeeper: binaries, the buddy in libexec, templates, man pages, shell completions,
# docs, the package hooks, the init scripts and the OpenRC supervisor glue (docs/integration.md
# says where each goes).
#
#   sh install.sh                          # cargo build --release, then install under /usr/local
#   PREFIX=/usr DESTDIR=/tmp/pkg sh install.sh
#   BINDIR=target/debug DESTDIR=... sh install.sh   # take already built binaries, build nothing
#
# Variables (all optional):
#   PREFIX      installation prefix (default /usr/local). PREFIX=/usr puts the buddy at
#               /usr/libexec/upkeeper/upk_buddy, where the controller looks by default.
#   DESTDIR     staging root prepended to every path (packages); the paths written into the
#               installed files never contain it.
#   SYSCONFDIR  configuration root (default /etc for PREFIX=/usr, PREFIX/etc otherwise).
#   BINDIR      directory holding upkeeper, upk_buddy, upkctl and uptop already built; when
#               unset, `cargo build --release --workspace --bins` builds them into target/release,
#               and upk_buddy and upkctl are built for the musl target too when it is installed.
#   MUSLDIR     with BINDIR: a directory holding upk_buddy and upkctl built for musl, installed
#               instead of BINDIR's (a package build that has them already).
#   INIT        the init systems whose files to install: any of openrc, systemd, inittab,
#               separated by spaces or commas, or all (the default) or none. The OpenRC script
#               goes to SYSCONFDIR/init.d (and conf.d); inittab's OpenRC readiness gate to
#               SYSCONFDIR/init.d/upkeeper-ready (the inittab line itself is for the admin to
#               add); the systemd unit to
#               PREFIX/lib/systemd/system; every init file is also kept, for reading, in
#               PREFIX/share/upkeeper/init-scripts.
#
# The controller goes to PREFIX/sbin (a system daemon, run by init as root); upkctl, uptop and
# the fleet shipper upkeeper-ship to PREFIX/bin; the buddy is not for people to run and goes to PREFIX/libexec/upkeeper.
# An existing controller file is never overwritten.
set -eu

SRC=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
if [ -z "${SYSCONFDIR:-}" ]; then
	if [ "$PREFIX" = /usr ]; then SYSCONFDIR=/etc; else SYSCONFDIR=$PREFIX/etc; fi
fi

# The buddy (one per service) and upkctl (one per command) are installed as they are measured
# in docs/benchmarks.md: static musl, non-PIE (.cargo/config.toml), which start in a tenth of
# the time of a glibc PIE and keep a third of its private memory. Without the musl target the
# glibc builds are installed, and this says so.
INIT=$(echo "${INIT:-all}" | tr ',' ' ')
for i in $INIT; do
	case $i in
	openrc | systemd | inittab | all | none) ;;
	*) echo "install.sh: INIT: unknown init system '$i' (openrc, systemd, inittab, all, none)" >&2; exit 1 ;;
	esac
done
# True when the files for init system $1 are asked for.
wants_init() {
	case " $INIT " in *" all "* | *" $1 "*) return 0 ;; *) return 1 ;; esac
}

if [ -n "${MUSLDIR:-}" ] && [ -z "${BINDIR:-}" ]; then
	echo "install.sh: MUSLDIR needs BINDIR (without BINDIR the musl builds are made here)" >&2
	exit 1
fi
MUSLDIR=${MUSLDIR:-}
if [ -z "${BINDIR:-}" ]; then
	(cd "$SRC" && cargo build --release --workspace --bins)
	BINDIR=$SRC/target/release
	musl=$(uname -m)-unknown-linux-musl
	if (cd "$SRC" && cargo build --release -p upk-buddy -p upkctl --target "$musl"); then
		MUSLDIR=$SRC/target/$musl/release
	else
		echo "install.sh: no $musl build (rustup target add $musl): installing the glibc upk_buddy and upkctl, larger and slower to start than the ones measured (docs/benchmarks.md)" >&2
	fi
fi
for b in upkeeper upk_buddy upkctl uptop; do
	[ -x "$BINDIR/$b" ] || { echo "install.sh: $BINDIR/$b is missing or not executable" >&2; exit 1; }
done
for b in upk_buddy upkctl; do
	[ -z "$MUSLDIR" ] || [ -x "$MUSLDIR/$b" ] || { echo "install.sh: $MUSLDIR/$b is missing or not executable" >&2; exit 1; }
done
# The binary to install for $1: the musl one when it was built.
built() {
	if [ -n "$MUSLDIR" ] && [ -x "$MUSLDIR/$1" ]; then echo "$MUSLDIR/$1"; else echo "$BINDIR/$1"; fi
}

sbin=$PREFIX/sbin
bin=$PREFIX/bin
libexec=$PREFIX/libexec/upkeeper
share=$PREFIX/share/upkeeper
D=$DESTDIR

# Paths in the shipped scripts are written for PREFIX=/usr and SYSCONFDIR=/etc; rewrite them.
subst() {
	sed -e "s|/usr/sbin/upkeeper|$sbin/upkeeper|g" \
	    -e "s|/usr/bin/upkctl|$bin/upkctl|g" \
	    -e "s|/usr/libexec/upkeeper|$libexec|g" \
	    -e "s|/usr/lib/upkeeper|$PREFIX/lib/upkeeper|g" \
	    -e "s|/etc/upkeeper|$SYSCONFDIR/upkeeper|g" \
	    "$1" > "$2"
	chmod "$3" "$2"
}

install -d "$D$sbin" "$D$bin" "$D$libexec" "$D$share/templates" "$D$share/hooks" \
	"$D$PREFIX/share/man/man1" "$D$PREFIX/share/man/man5" "$D$PREFIX/share/man/man8" \
	"$D$PREFIX/share/doc/upkeeper" \
	"$D$PREFIX/share/bash-completion/completions" "$D$PREFIX/share/zsh/site-functions" \
	"$D$PREFIX/share/fish/vendor_completions.d" "$D$SYSCONFDIR/upkeeper/upkeeper.d"

install -m 0755 "$BINDIR/upkeeper" "$D$sbin/upkeeper"
install -m 0755 "$(built upk_buddy)" "$D$libexec/upk_buddy"
install -m 0755 "$(built upkctl)" "$D$bin/upkctl"
install -m 0755 "$BINDIR/uptop" "$D$bin/uptop"
# The fleet shipper (docs/fleet.md), beside upkctl, which runs it for `upkctl --fleet`; its
# service file is an example to copy into upkeeper.d once the database URL is filled in.
if [ -x "$BINDIR/upkeeper-ship" ]; then
	install -m 0755 "$BINDIR/upkeeper-ship" "$D$bin/upkeeper-ship"
	install -d "$D$share/examples"
	install -m 0644 "$SRC/packaging/upkeeper.d/upkeeper-ship.conf" "$D$share/examples/upkeeper-ship.conf"
else
	echo "install.sh: $BINDIR/upkeeper-ship is not built: the fleet shipper is not installed (docs/fleet.md)" >&2
fi

# The controller embeds its templates; these copies are for reading and for --templates.
for t in "$SRC"/templates/*; do install -m 0644 "$t" "$D$share/templates/"; done

# Man pages and completions come from the programs themselves, so they always match the
# binaries; upkeeper.conf(5) is made from docs/configuration.md (man/conf5.py).
"$BINDIR/upkctl" man --dir "$D$PREFIX/share/man/man1"
"$BINDIR/uptop" --man > "$D$PREFIX/share/man/man1/uptop.1"
"$BINDIR/upkeeper" man > "$D$PREFIX/share/man/man8/upkeeper.8"
install -m 0644 "$SRC/man/upkeeper.conf.5" "$D$PREFIX/share/man/man5/"
"$BINDIR/upkctl" completions bash > "$D$PREFIX/share/bash-completion/completions/upkctl"
"$BINDIR/upkctl" completions zsh > "$D$PREFIX/share/zsh/site-functions/_upkctl"
"$BINDIR/upkctl" completions fish > "$D$PREFIX/share/fish/vendor_completions.d/upkctl.fish"

install -m 0644 "$SRC/README.md" "$D$PREFIX/share/doc/upkeeper/"
for f in "$SRC"/docs/*.md; do install -m 0644 "$f" "$D$PREFIX/share/doc/upkeeper/"; done

for h in "$SRC"/packaging/hooks/*; do
	subst "$h" "$D$share/hooks/${h##*/}" 0755
done

# Init scripts: every one for reading, and those INIT asks for where their init looks.
if [ -d "$SRC/init-scripts" ]; then
	install -d "$D$share/init-scripts"
	for f in "$SRC"/init-scripts/*; do
		subst "$f" "$D$share/init-scripts/${f##*/}" 0644
	done
	if wants_init openrc; then
		install -d "$D$SYSCONFDIR/init.d"
		subst "$SRC/init-scripts/upkeeper.initd" "$D$SYSCONFDIR/init.d/upkeeper" 0755
	fi
	# With the controller started by inittab, OpenRC's `need upkeeper` waits at the gate.
	if wants_init inittab; then
		install -d "$D$SYSCONFDIR/init.d"
		subst "$SRC/init-scripts/upkeeper-ready.initd" "$D$SYSCONFDIR/init.d/upkeeper-ready" 0755
	fi
	if wants_init openrc; then
		install -d "$D$SYSCONFDIR/conf.d"
		[ -e "$D$SYSCONFDIR/conf.d/upkeeper" ] ||
			subst "$SRC/init-scripts/upkeeper.confd" "$D$SYSCONFDIR/conf.d/upkeeper" 0644
	fi
	if wants_init systemd; then
		install -d "$D$PREFIX/lib/systemd/system"
		subst "$SRC/init-scripts/upkeeper.service" "$D$PREFIX/lib/systemd/system/upkeeper.service" 0644
	fi
fi

# The OpenRC supervisor glue (supervisor=upkeeper): the library a service script may source,
# and the rc.conf.d file that sources it for every script. OpenRC 0.45 reads rc.conf.d only
# when the directory exists, so it is created.
if [ -d "$SRC/openrc" ] && wants_init openrc; then
	install -d "$D$PREFIX/lib/upkeeper" "$D$SYSCONFDIR/rc.conf.d"
	subst "$SRC/openrc/upkeeper.sh" "$D$PREFIX/lib/upkeeper/openrc.sh" 0644
	subst "$SRC/openrc/rc.conf.d/upkeeper.conf" "$D$SYSCONFDIR/rc.conf.d/upkeeper.conf" 0644
fi

# A controller file naming this prefix's buddy, unless one exists (it is the admin's).
conf=$D$SYSCONFDIR/upkeeper/upkeeper.conf
if [ ! -e "$conf" ]; then
	cat > "$conf" <<EOF
// upkeeper's controller file (docs/configuration.md). Installed once; never overwritten.
{
    // Where the controller finds upk_buddy (installed by install.sh with PREFIX=$PREFIX).
    UpkBuddyPath: "$libexec/upk_buddy",
    // Service files: one drop-in per package (docs/integration.md, packaging hooks).
    SvcConfigPath: "$SYSCONFDIR/upkeeper/upkeeper.d",
}
EOF
	chmod 0644 "$conf"
fi

echo "upkeeper installed under ${D:-}$PREFIX (controller file $SYSCONFDIR/upkeeper/upkeeper.conf)"
