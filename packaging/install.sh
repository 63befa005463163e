#!/bin/sh
# Installs mtt into $DESTDIR$PREFIX/bin together with the links mtt-client, mtt-server and
# mtt-mu-server that select a role by name, the systemd units into $PREFIX/lib/systemd/system
# (started from $PREFIX/bin) and the example environment files into
# $PREFIX/share/doc/mtt/examples. Idempotent. `--uninstall` removes what it installs.
#   PREFIX   default /usr/local
#   DESTDIR  staging root, default empty
#   MTT_BIN  the binary to install, default target/release/mtt of this source tree (found
#            from the script's own place, whatever the working directory)
set -eu
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
here=$(dirname "$0")
MTT_BIN=${MTT_BIN:-$here/../target/release/mtt}
bindir="$DESTDIR$PREFIX/bin"
unitdir="$DESTDIR$PREFIX/lib/systemd/system"
exampledir="$DESTDIR$PREFIX/share/doc/mtt/examples"
links="mtt-client mtt-server mtt-mu-server"
units="mtt-client@.service mtt-server@.service mtt-mu-server.service"
examples="client-example.env server-example.env mu-server-example.env"

case "${1:-}" in
  --uninstall)
    for f in $links mtt; do
      rm -f "$bindir/$f"
    done
    for f in $units; do
      rm -f "$unitdir/$f"
    done
    for f in $examples; do
      rm -f "$exampledir/$f"
    done
    rmdir "$exampledir" "$DESTDIR$PREFIX/share/doc/mtt" 2>/dev/null || true
    echo "removed mtt, its links, units and examples from $DESTDIR$PREFIX"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--uninstall]   (PREFIX, DESTDIR and MTT_BIN from the environment)" >&2
    exit 2
    ;;
esac

if [ ! -x "$MTT_BIN" ]; then
  echo "$0: $MTT_BIN not found: run 'cargo build --release' first or set MTT_BIN" >&2
  exit 1
fi
install -d "$bindir" "$unitdir" "$exampledir"
install -m 0755 "$MTT_BIN" "$bindir/mtt"
for l in $links; do
  ln -sfn mtt "$bindir/$l"
done
# The units name the packaged path /usr/bin; point them at this prefix.
for u in $units; do
  sed "s#^ExecStart=/usr/bin/#ExecStart=$PREFIX/bin/#" "$here/systemd/$u" >"$unitdir/$u.tmp"
  chmod 0644 "$unitdir/$u.tmp"
  mv "$unitdir/$u.tmp" "$unitdir/$u"
done
for e in $examples; do
  install -m 0644 "$here/systemd/$e" "$exampledir/$e"
done
echo "installed $bindir/mtt, links ($links), units in $unitdir, examples in $exampledir"
