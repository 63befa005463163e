#!/bin/sh
# Installs mtt into $DESTDIR$PREFIX/bin together with the links mtt-client, mtt-server and
# mtt-mu-server that select a role by name. Idempotent. `--uninstall` removes what it installs.
#   PREFIX   default /usr/local
#   DESTDIR  staging root, default empty
#   MTT_BIN  the binary to install, default target/release/mtt
set -eu
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
MTT_BIN=${MTT_BIN:-target/release/mtt}
bindir="$DESTDIR$PREFIX/bin"
links="mtt-client mtt-server mtt-mu-server"

case "${1:-}" in
  --uninstall)
    for f in $links mtt; do
      rm -f "$bindir/$f"
    done
    echo "removed mtt and its links from $bindir"
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
install -d "$bindir"
install -m 0755 "$MTT_BIN" "$bindir/mtt"
for l in $links; do
  ln -sfn mtt "$bindir/$l"
done
echo "installed $bindir/mtt and links: $links"
