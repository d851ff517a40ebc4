#!/bin/sh
# Builds the Debian package from the tree: install.sh with PREFIX=/usr into a staging root,
# the control file and maintainer scripts beside it, then dpkg-deb. No debhelper is needed.
#
#   sh packaging/deb/build.sh OUTDIR
#
# Variables: VERSION (default: the workspace's version, revision -1), COMPRESS (dpkg-deb -Z:
# xz by default; none for a quick test build of debug binaries), BINDIR and MUSLDIR as for
# install.sh (default: a release build here, musl for the buddy and upkctl when the target is
# installed). The package installs the systemd unit where systemd looks and keeps the OpenRC
# and inittab files in /usr/share/upkeeper/init-scripts (a Debian /etc/init.d script must be
# an LSB one; docs/packaging.md).
set -eu
[ $# -eq 1 ] || { echo "usage: ${0##*/} OUTDIR" >&2; exit 100; }
SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/Cargo.toml" | head -n 1)-1}
ARCH=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

PREFIX=/usr DESTDIR=$stage INIT=systemd sh "$SRC/install.sh" >/dev/null
install -d "$stage/DEBIAN" "$stage/usr/share/doc/upkeeper"
cp "$SRC/LICENSE-MIT" "$SRC/LICENSE-APACHE" "$stage/usr/share/doc/upkeeper/"
for s in postinst prerm postrm; do
	install -m 0755 "$SRC/packaging/deb/$s" "$stage/DEBIAN/$s"
done
# dpkg keeps an edited conffile on upgrade and asks, or keeps it, as the admin decides.
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: upkeeper
Version: $VERSION
Architecture: $ARCH
Maintainer: upkeeper developers <upkeeper@localhost>
Installed-Size: $size
Depends: libc6
Section: admin
Priority: optional
Homepage: file:///usr/share/doc/upkeeper/README.md
Description: process supervisor with an audit trail
 upkeeper keeps daemons alive under the init system already there (systemd, OpenRC,
 inittab) and records every state change of every service, and every command that
 caused one, in a queryable SQLite store: upkctl why, history, incident.
CONTROL
deb=$OUT/upkeeper_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group "-Z${COMPRESS:-xz}" --build "$stage" "$deb" >/dev/null
echo "$deb"
