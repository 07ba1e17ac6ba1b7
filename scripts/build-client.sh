#!/usr/bin/env bash
# Part of the build (after tsc): makes dist/bin/cairn, the command users run
# (cli/client/cairn.c; see docs/server.md), and dist/build-id, which a
# server compares with its clients' so it never runs another build's code.
# Without a C compiler, dist/bin/cairn is a shell script that runs the Node
# CLI (everything works, only without the server).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist/bin
# The id is a hash of what the server would load: the compiled code and the
# locked dependencies. Rebuilding unchanged code keeps a running server valid.
{ find dist/cli dist/src -name '*.js' -type f -print0 | LC_ALL=C sort -z | xargs -0 cat; cat package-lock.json 2>/dev/null || true; } \
  | sha256sum | cut -c1-24 > dist/build-id.tmp
mv dist/build-id.tmp dist/build-id
cc=${CC:-cc}
if command -v "$cc" >/dev/null 2>&1; then
  "$cc" -O2 -Wall -Wextra -Werror -o dist/bin/cairn.tmp cli/client/cairn.c
  # The server's view of a client's process (namespaces, limits, ...): see docs/server.md.
  "$cc" -O2 -Wall -Wextra -Werror -o dist/bin/cairn-peer.tmp cli/client/peer.c
  mv dist/bin/cairn-peer.tmp dist/bin/cairn-peer
else
  echo "build-client: no C compiler ($cc): dist/bin/cairn will run the Node CLI directly, without the server" >&2
  printf '#!/bin/sh\nexec node "$(dirname "$(readlink -f "$0")")/../cli/main.js" "$@"\n' > dist/bin/cairn.tmp
  chmod +x dist/bin/cairn.tmp
fi
mv dist/bin/cairn.tmp dist/bin/cairn
