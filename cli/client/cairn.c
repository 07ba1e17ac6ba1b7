/*
 * cairn: the command users run. When a cairn server answers on its socket
 * (`cairn server start`), the command runs in one of the server's warm
 * workers and this process only relays its output: no Node start-up. In
 * every other case (no server, another installation or build of Cairn, a command the server
 * leaves to its own process, every worker busy) it execs the Node CLI,
 * dist/cli/main.js, with the same arguments, so the outcome never depends
 * on whether a server runs. The protocol is in cli/serve/protocol.ts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

static char dist_dir[PATH_MAX]; /* this executable's dist/ (it lives in dist/bin/) */
static char **saved_argv;
static int saved_argc;

static void die(const char *msg) {
  fprintf(stderr, "cairn: %s\n", msg);
  exit(1);
}

/* Runs the Node CLI in this process's place. */
static void run_node(int argc, char **argv) {
  const char *node = getenv("CAIRN_NODE");
  if (!node || !*node) node = "node";
  char main_js[PATH_MAX + 32];
  snprintf(main_js, sizeof main_js, "%s/cli/main.js", dist_dir);
  char **args = calloc((size_t)argc + 2, sizeof *args);
  if (!args) die("out of memory");
  args[0] = (char *)node;
  args[1] = main_js;
  for (int i = 1; i < argc; i++) args[i + 1] = argv[i];
  execvp(node, args);
  fprintf(stderr, "cairn: cannot run %s: %s\n", node, strerror(errno));
  exit(127);
}

static void run_node(int argc, char **argv);

/* Runs the Node CLI instead of asking the server; with CAIRN_SERVER_DEBUG set, says why first. */
static void without_server(const char *why, const char *detail) {
  const char *debug = getenv("CAIRN_SERVER_DEBUG");
  if (debug && *debug) fprintf(stderr, "cairn: running without the server: %s%s\n", why, detail ? detail : "");
  run_node(saved_argc, saved_argv);
}

/*
 * The socket's directory must be this user's alone, and no directory above
 * it may let another user swap it: the same rule as cli/serve/socket-dir.ts.
 * Resolves the directory's parent (realpath) and rewrites `sock` to the
 * resolved path, which has no symlink in it. Returns NULL if the socket may
 * be used, else why not.
 */
static const char *untrusted_socket(char *sock, size_t size) {
  static char why[PATH_MAX + 128];
  uid_t uid = getuid();
  char *slash = strrchr(sock, '/');
  if (!slash || slash == sock) return "the socket path has no directory";
  char dir[PATH_MAX], parent[PATH_MAX], real[PATH_MAX], base[PATH_MAX], dir_name[PATH_MAX];
  snprintf(base, sizeof base, "%s", slash + 1);
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - sock), sock);
  char *dslash = strrchr(dir, '/');
  if (!dslash) return "the socket path is not absolute";
  snprintf(dir_name, sizeof dir_name, "%s", dslash + 1);
  snprintf(parent, sizeof parent, "%.*s", dslash == dir ? 1 : (int)(dslash - dir), dir);
  if (!realpath(parent, real)) {
    snprintf(why, sizeof why, "no socket directory (%s: %s)", parent, strerror(errno));
    return why;
  }
  /* Every ancestor: root's or ours, and if others may write to it, sticky. */
  char at[PATH_MAX];
  snprintf(at, sizeof at, "%s", real);
  for (;;) {
    struct stat st;
    if (lstat(at, &st) != 0 || !S_ISDIR(st.st_mode) || (st.st_uid != 0 && st.st_uid != uid) ||
        ((st.st_mode & 022) && !(st.st_mode & S_ISVTX))) {
      snprintf(why, sizeof why, "the socket's ancestor directory %s is not safe "
               "(another user's, or writable by others and not sticky)", at);
      return why;
    }
    if (strcmp(at, "/") == 0) break;
    char *s = strrchr(at, '/');
    if (s == at) s[1] = 0;
    else *s = 0;
  }
  char real_dir[PATH_MAX];
  const char *under = strcmp(real, "/") == 0 ? "" : real;
  if (snprintf(real_dir, sizeof real_dir, "%s/%s", under, dir_name) >= (int)sizeof real_dir) {
    return "the socket path is too long";
  }
  struct stat st;
  if (lstat(real_dir, &st) != 0) {
    snprintf(why, sizeof why, "no socket directory (%s: %s)", real_dir, strerror(errno));
    return why;
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != uid || (st.st_mode & 077)) {
    snprintf(why, sizeof why,
             "the socket directory %s is not a directory of yours with mode 0700 (it is %s, uid %u, mode %o)",
             real_dir, S_ISDIR(st.st_mode) ? "a directory" : S_ISLNK(st.st_mode) ? "a symlink" : "not a directory",
             (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    return why;
  }
  if (snprintf(sock, size, "%s/%s", real_dir, base) >= (int)size) return "the socket path is too long";
  if (lstat(sock, &st) != 0) {
    snprintf(why, sizeof why, "no server (%s: %s)", sock, strerror(errno));
    return why;
  }
  if (!S_ISSOCK(st.st_mode) || st.st_uid != uid) {
    snprintf(why, sizeof why, "%s is not a socket of yours", sock);
    return why;
  }
  return NULL;
}

/* This installation's key in socket names: FNV-1a (64 bits) of dist_dir, as installId() in cli/serve/protocol.ts. */
static void install_id(char *out, size_t size) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char *p = (const unsigned char *)dist_dir; *p; p++) h = (h ^ *p) * 0x100000001b3ULL;
  snprintf(out, size, "%016llx", (unsigned long long)h);
}

/* Same rule as serverSocketPath() in cli/serve/protocol.ts: one server per user and installation. */
static int socket_path(char *out, size_t size) {
  const char *explicit_path = getenv("CAIRN_SERVER_SOCKET");
  if (explicit_path && *explicit_path) return snprintf(out, size, "%s", explicit_path) < (int)size;
  char id[32];
  install_id(id, sizeof id);
  const char *runtime = getenv("XDG_RUNTIME_DIR");
  if (runtime && *runtime) return snprintf(out, size, "%s/cairn/server-%s.sock", runtime, id) < (int)size;
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp) tmp = getenv("TMP");
  if (!tmp || !*tmp) tmp = getenv("TEMP");
  if (!tmp || !*tmp) tmp = "/tmp";
  size_t n = strlen(tmp);
  while (n > 1 && tmp[n - 1] == '/') n--; /* as Node's os.tmpdir() does */
  return snprintf(out, size, "%.*s/cairn-%u/server-%s.sock", (int)n, tmp, (unsigned)getuid(), id) < (int)size;
}

/* A growable byte buffer for the request. */
struct buf { char *p; size_t len, cap; };

static void put(struct buf *b, const char *s, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 256;
    b->p = realloc(b->p, b->cap);
    if (!b->p) die("out of memory");
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void put_field(struct buf *b, const char *s) { put(b, s, strlen(s) + 1); }

/* Writes everything, waiting when fd is non-blocking and full. */
static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
        poll(&pfd, 1, -1);
        continue;
      }
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/*
 * While a served command runs, SIGINT, SIGTERM and SIGHUP sent to this
 * process go to the worker running it (an S frame), which stops its builds
 * as the Node CLI does; this process then exits with the worker's status
 * (130, 143, 129) once the builds' programs are gone, as the Node CLI would.
 */
static int server_fd = -1;
static volatile sig_atomic_t caught;

static void forward_signal(int sig) {
  int saved = errno;
  caught = sig;
  char f[5 + 7] = { 'S', 0, 0, 0, 6, 'S', 'I', 'G', 'I', 'N', 'T' };
  if (sig == SIGTERM) memcpy(f + 4, "\7SIGTERM", 8);
  else if (sig == SIGHUP) memcpy(f + 4, "\6SIGHUP", 7);
  (void)send(server_fd, f, (size_t)(5 + f[4]), MSG_NOSIGNAL | MSG_DONTWAIT);
  errno = saved;
}

static void forward_signals(int fd) {
  server_fd = fd;
  struct sigaction sa = { .sa_handler = forward_signal, .sa_flags = SA_RESTART };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
}

static int read_all(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static void read_build_id(char *out, size_t size) {
  char file[PATH_MAX + 16];
  snprintf(file, sizeof file, "%s/build-id", dist_dir);
  snprintf(out, size, "none");
  FILE *f = fopen(file, "r");
  if (!f) return;
  if (fgets(out, (int)size, f)) out[strcspn(out, "\r\n")] = 0;
  if (!*out) snprintf(out, size, "none");
  fclose(f);
}

/*
 * The request carries the whole environment, and the server runs commands
 * with its own uid: talk only to a server of this very user. (The socket
 * may sit in a world-writable directory, where anyone could have bound it.)
 */
static int peer_is_us(int fd) {
  struct ucred cred;
  socklen_t len = sizeof cred;
  return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.uid == getuid();
}

int main(int argc, char **argv) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) die("cannot find its own executable (/proc/self/exe)");
  exe[n] = 0;
  /* dist/bin/cairn -> dist */
  char *slash = strrchr(exe, '/');
  if (slash) *slash = 0;
  slash = strrchr(exe, '/');
  if (slash) *slash = 0;
  snprintf(dist_dir, sizeof dist_dir, "%s", exe);

  saved_argc = argc;
  saved_argv = argv;
  const char *no_server = getenv("CAIRN_NO_SERVER");
  if (no_server && *no_server && strcmp(no_server, "0") != 0) run_node(argc, argv);
  /* realize --break runs a shell on this process's stdin and terminal, which a server cannot lend it. */
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--break") == 0 || strncmp(argv[i], "--break=", 8) == 0) {
      without_server("--break needs this terminal", NULL);
    }
  }

  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  char sock[PATH_MAX];
  if (!socket_path(sock, sizeof sock)) without_server("the socket path is too long", NULL);
  const char *why = untrusted_socket(sock, sizeof sock);
  if (why) without_server(why, NULL);
  if (snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock) >= (int)sizeof addr.sun_path) {
    without_server("the socket path is too long: ", sock);
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) without_server("cannot make a socket", NULL);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) without_server("no server answers on ", sock);
  if (!peer_is_us(fd)) without_server("the server on the socket is not yours: ", sock);

  /* The request: see parseRequest() in cli/serve/protocol.ts. */
  struct buf req = { 0 };
  char tmp[PATH_MAX];
  put(&req, "Q\0\0\0\0", 5);
  put_field(&req, "cairn-request-1");
  /* BUILD-ID@INSTALL: a server of another installation does not serve this one, even of the same build. */
  read_build_id(tmp, sizeof tmp);
  put(&req, tmp, strlen(tmp));
  put(&req, "@", 1);
  put_field(&req, dist_dir);
  if (!getcwd(tmp, sizeof tmp)) without_server("cannot read the working directory", NULL);
  put_field(&req, tmp);
  mode_t mask = umask(0);
  umask(mask);
  snprintf(tmp, sizeof tmp, "%o", (unsigned)mask);
  put_field(&req, tmp);
  put_field(&req, isatty(1) ? "1" : "0");
  put_field(&req, isatty(2) ? "1" : "0");
  struct winsize ws;
  snprintf(tmp, sizeof tmp, "%u", ioctl(2, TIOCGWINSZ, &ws) == 0 ? (unsigned)ws.ws_col : 0u);
  put_field(&req, tmp);
  snprintf(tmp, sizeof tmp, "%d", argc - 1);
  put_field(&req, tmp);
  for (int i = 1; i < argc; i++) put_field(&req, argv[i]);
  for (char **e = environ; *e; e++) put_field(&req, *e);
  uint32_t len = (uint32_t)(req.len - 5);
  req.p[1] = (char)(len >> 24);
  req.p[2] = (char)(len >> 16);
  req.p[3] = (char)(len >> 8);
  req.p[4] = (char)len;
  for (size_t off = 0; off < req.len;) {
    ssize_t w = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      /* Nothing was run: the server went away before reading the request. */
      without_server("the server closed the connection before reading the request", NULL);
    }
    off += (size_t)w;
  }
  free(req.p);
  forward_signals(fd);

  /* Relay frames until the exit status. */
  size_t cap = 1 << 16;
  char *payload = malloc(cap);
  if (!payload) die("out of memory");
  for (;;) {
    unsigned char head[5];
    if (read_all(fd, (char *)head, 5) != 0) {
      fprintf(stderr, "cairn: error E_SERVER_LOST: the cairn server closed the connection before the command finished (see the server log, next to its socket %s)\n", addr.sun_path);
      return 1;
    }
    size_t plen = ((size_t)head[1] << 24) | ((size_t)head[2] << 16) | ((size_t)head[3] << 8) | head[4];
    if (plen + 1 > cap) {
      cap = plen + 1;
      payload = realloc(payload, cap);
      if (!payload) die("out of memory");
    }
    if (read_all(fd, payload, plen) != 0) {
      fprintf(stderr, "cairn: error E_SERVER_LOST: the cairn server closed the connection in the middle of a message\n");
      return 1;
    }
    payload[plen] = 0;
    switch (head[0]) {
    case 'O':
    case 'E':
      /* A closed stdout (`| head`) ends this process with SIGPIPE, as for most Unix tools; the server then ends the command. */
      if (write_all(head[0] == 'O' ? 1 : 2, payload, plen) != 0) return 1;
      break;
    case 'X':
      return atoi(payload);
    case 'R':
      /* A signal already came: the user wants no command run. */
      if (caught) return 128 + caught;
      without_server(payload, NULL);
      break;
    default:
      fprintf(stderr, "cairn: error E_SERVER_PROTOCOL: unknown message type %d from the cairn server\n", head[0]);
      return 1;
    }
  }
}
