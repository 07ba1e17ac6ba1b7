#!/usr/bin/env bash
# Part of the build (after tsc): makes dist/build-id, which a server compares
# with its clients' so it never runs another build's code, and dist/bin/cairn,
# the command users run (scripts/install-client.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist/bin
# The id is a hash of what the server would load: the compiled code and the
# locked dependencies. Rebuilding unchanged code keeps a running server valid.
{ find dist/cli dist/src -name '*.js' -type f -print0 | LC_ALL=C sort -z | xargs -0 cat; cat package-lock.json 2>/dev/null || true; } \
  | sha256sum | cut -c1-24 > dist/build-id.tmp
mv dist/build-id.tmp dist/build-id
# `npm pack` and `npm publish` run this through "prepare": the tarball gets the
# Node fallback, never machine code for this machine; each install builds its
# own client, and "postpack" builds this checkout's again.
case ${npm_command:-} in
  pack | publish) sh scripts/install-client.sh --fallback ;;
  *) sh scripts/install-client.sh --strict ;;
esac
