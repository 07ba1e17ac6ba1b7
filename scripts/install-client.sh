#!/bin/sh
# Makes dist/bin/cairn, the command users run: the C client
# (cli/client/cairn.c, see docs/server.md) when this machine compiles it,
# else a shell script that runs the Node CLI (everything works, only without
# the server). It runs when the package is installed (npm's "install"
# script), so the client is built for the machine that runs it, and as part
# of the build. POSIX sh: it must run where bash is missing.
#
#   (no option)  install: never fails; any problem with the compiler
#                leaves the Node fallback, with a message on stderr
#   --strict     the development build: -Werror, and a failed compile fails
#   --fallback   write the fallback without compiling: what `npm pack` ships,
#                so the tarball holds no machine code and its command works
#                wherever it is installed, even with scripts disabled
set -u
mode=install
for arg in "$@"; do
  case $arg in
    --strict) mode=strict ;;
    --fallback) mode=fallback ;;
    *) echo "install-client: unknown option $arg" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.." || exit 1
fail() {
  if [ "$mode" = strict ]; then exit 1; fi
  exit 0
}
mkdir -p dist/bin || fail
tmp=dist/bin/cairn.tmp.$$
peer=dist/bin/cairn-peer.tmp.$$
spawner=dist/bin/cairn-spawn.tmp.$$
trap 'rm -f "$tmp" "$tmp.err" "$peer" "$spawner"' EXIT
cc=${CC:-cc}
built=no
if [ "$mode" = fallback ]; then
  :
elif [ "$(uname -s)" != Linux ]; then
  # The client finds itself through /proc/self/exe and checks the server's
  # user with SO_PEERCRED: Linux only.
  echo "cairn: the C client is for Linux only; the cairn command runs the Node CLI directly, without the server" >&2
elif ! command -v "$cc" >/dev/null 2>&1; then
  echo "cairn: no C compiler ($cc); the cairn command runs the Node CLI directly, without the server" >&2
elif [ "$mode" = strict ]; then
  "$cc" -O2 -Wall -Wextra -Werror -o "$tmp" cli/client/cairn.c || exit 1
  "$cc" -O2 -Wall -Wextra -Werror -o "$peer" cli/client/peer.c || exit 1
  "$cc" -O2 -Wall -Wextra -Werror -o "$spawner" cli/client/spawn.c || exit 1
  built=yes
elif "$cc" -O2 -o "$tmp" cli/client/cairn.c 2>"$tmp.err" \
  && CAIRN_NO_SERVER=1 CAIRN_NODE=true "./$tmp" >/dev/null 2>&1; then
  # The run above checks that the result executes here (a compiler set up
  # for another machine, a noexec directory), without starting Node: the
  # client execs $CAIRN_NODE, here `true`.
  built=yes
else
  echo "cairn: the C client did not build with $cc; the cairn command runs the Node CLI directly," \
    "without the server:" >&2
  cat "$tmp.err" >&2 2>/dev/null
fi
if [ "$built" = no ]; then
  # shellcheck disable=SC2016 # expanded when the command runs, not now
  printf '%s\n' '#!/bin/sh' \
    '# The cairn command without the C client (see scripts/install-client.sh).' \
    'exec "${CAIRN_NODE:-node}" "$(dirname "$(readlink -f "$0")")/../cli/main.js" "$@"' > "$tmp" || fail
  chmod 755 "$tmp" || fail
fi
# cairn-peer lets the server see a client's process (namespaces, limits,
# see docs/server.md); without it the server serves no one, and every
# command runs the Node CLI. It is never shipped in a tarball.
if [ "$built" = yes ] && { [ -f "$peer" ] || "$cc" -O2 -o "$peer" cli/client/peer.c 2>/dev/null; }; then
  mv -f "$peer" dist/bin/cairn-peer || fail
else
  rm -f dist/bin/cairn-peer
fi
# cairn-spawn starts build programs for a Cairn process with posix_spawn, at
# a third of what Node's spawn costs (src/stages/spawn-helper.ts); without
# it programs start with Node's spawn. Never shipped in a tarball either.
if [ "$built" = yes ] && { [ -f "$spawner" ] || "$cc" -O2 -o "$spawner" cli/client/spawn.c 2>/dev/null; }; then
  mv -f "$spawner" dist/bin/cairn-spawn || fail
else
  rm -f dist/bin/cairn-spawn
fi
mv -f "$tmp" dist/bin/cairn || fail
