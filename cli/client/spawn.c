/*
 * cairn-spawn: starts the programs a build runs through `exec` on behalf of
 * a Cairn process (src/stages/spawn-helper.ts). Node's spawn forks the whole
 * Node process, which costs 2-3 ms from a large one; posix_spawn from this
 * small process (vfork, exec) costs about 0.7 ms, and a chain of builds
 * pays that once per stage. Cairn starts it once, on its first exec, and talks to it over its
 * stdin and stdout.
 *
 * Frames, both ways: u32 body length, then the body: u8 type, u32 id,
 * payload (integers little-endian).
 *   to the helper:   'S' spawn: u8 flags (1: stdin is a pipe), u32 umask,
 *                        u32 argc, u32 envc, then NUL-terminated strings:
 *                        cmd, cwd, argv[0..argc), env[0..envc)
 *                    'I' input for the program's stdin; empty: end of input
 *   from the helper: 'H' hello (id 0): u32 protocol version
 *                    'P' started: i32 pid    'E' not started: i32 errno
 *                    'O' / 'R' stdout / stderr bytes; empty: end of stream
 *                    'X' exited: i32 exit code (-1 if killed), i32 signal
 *
 * Each program runs as Node's `spawn(..., { detached: true })` would run it
 * (vfork and exec, as libuv does): a session and process group of its own,
 * default signal dispositions, an empty signal mask, PATH looked up in the
 * program's environment (as execvp does, with its /bin/sh fallback for a
 * file without a #! line), stdin from /dev/null unless input is sent.
 * posix_spawn would be as fast, but glibc's leaves its own signals 32 and 33
 * ignored in the program, which Node's spawn does not.
 *
 * At end of input (Cairn exited) it exits at once: it never outlives Cairn.
 * The process groups of programs still running are Cairn's to end, as with
 * Node's spawn. SIGINT and SIGHUP from a terminal are ignored: Cairn decides
 * how its builds end.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION 1
#define MAX_FRAME (64u << 20)
#define READ_SIZE 65536
/* A program that fills its 64 KiB pipe gets a larger one: fewer reads, frames and wake-ups for big outputs. */
#define BIG_PIPE (1 << 20)

struct chunk {
  struct chunk *next;
  size_t len, off;
  char data[];
};

struct child {
  struct child *next;
  uint32_t id;
  pid_t pid;
  int out, err, in; /* -1 once closed */
  int exited;
  int grown; /* its output pipes were enlarged */
  int input_done; /* the last 'I' frame came */
  struct chunk *input, *input_tail;
};

static struct child *children;
static char readbuf[BIG_PIPE];

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void quit(int status);

static void write_all(const struct iovec *iov0, int n) {
  struct iovec iov[3];
  memcpy(iov, iov0, sizeof(struct iovec) * (size_t)n);
  int i = 0;
  while (i < n) {
    ssize_t w = writev(1, iov + i, n - i);
    if (w < 0) {
      if (errno == EINTR) continue;
      quit(1);
    }
    size_t left = (size_t)w;
    while (i < n && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (i < n) {
      iov[i].iov_base = (char *)iov[i].iov_base + left;
      iov[i].iov_len -= left;
    }
  }
}

/* Small frames wait here for the end of the poll round and leave in one write: a program's end (two
   end-of-stream frames and its exit) wakes Cairn once, not three times. */
static unsigned char small[16384];
static size_t small_len;

static void flush_small(void) {
  struct iovec iov[1] = {{small, small_len}};
  if (small_len) write_all(iov, 1);
  small_len = 0;
}

/* One frame to Cairn. Writes block: a slow reader slows the programs down, as a full pipe would. */
static void send_frame(char type, uint32_t id, const void *a, size_t alen, const void *b, size_t blen) {
  unsigned char head[9];
  put32(head, (uint32_t)(5 + alen + blen));
  head[4] = (unsigned char)type;
  put32(head + 5, id);
  if (9 + alen + blen > sizeof small - small_len) flush_small();
  if (9 + alen + blen <= sizeof small) {
    memcpy(small + small_len, head, 9);
    if (alen) memcpy(small + small_len + 9, a, alen);
    if (blen) memcpy(small + small_len + 9 + alen, b, blen);
    small_len += 9 + alen + blen;
    return;
  }
  struct iovec iov[3] = {{head, 9}, {(void *)a, alen}, {(void *)b, blen}};
  write_all(iov, 3);
}

static void send_int(char type, uint32_t id, int32_t v) {
  unsigned char p[4];
  put32(p, (uint32_t)v);
  send_frame(type, id, p, 4, NULL, 0);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void drop_input(struct child *c) {
  while (c->input) {
    struct chunk *n = c->input->next;
    free(c->input);
    c->input = n;
  }
  c->input_tail = NULL;
}

/* Frees the programs that exited and whose output ended (after a poll round, never during one). */
static void sweep(void) {
  for (struct child **p = &children; *p;) {
    struct child *c = *p;
    if (!c->exited || c->out >= 0 || c->err >= 0) {
      p = &c->next;
      continue;
    }
    close_fd(&c->in);
    drop_input(c);
    *p = c->next;
    free(c);
  }
}

static struct child *find(uint32_t id) {
  for (struct child *c = children; c; c = c->next)
    if (c->id == id) return c;
  return NULL;
}

/* The value of PATH in a program's environment, or execvp's default. */
static const char *path_of(char **env) {
  for (char **e = env; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) return *e + 5;
  return "/usr/bin:/bin";
}

/* The files execvp would try for cmd, in order (malloc'd; NULL-terminated). */
static char **candidates(const char *cmd, char **env) {
  size_t n = 1;
  const char *path = path_of(env);
  int search = *cmd && !strchr(cmd, '/');
  if (search)
    for (const char *q = path; *q; q++) n += *q == ':';
  char **out = calloc(n + 1, sizeof *out);
  if (!out) quit(3);
  if (!search) {
    out[0] = strdup(cmd);
    if (!out[0]) quit(3);
    return out;
  }
  size_t clen = strlen(cmd), k = 0;
  for (const char *q = path;; q++) {
    const char *end = strchrnul(q, ':');
    size_t dlen = (size_t)(end - q);
    char *f = malloc(dlen + clen + 2);
    if (!f) quit(3);
    memcpy(f, q, dlen);
    if (dlen > 0) f[dlen++] = '/'; /* an empty entry is the working directory, as for execvp */
    memcpy(f + dlen, cmd, clen + 1);
    out[k++] = f;
    if (!*end) break;
    q = end;
  }
  return out;
}

/* Set by a vfork child that could not exec (it shares this process's memory until it execs or exits). */
static volatile int child_errno;

/*
 * The child between vfork and exec: what Node's spawn (libuv) does there for `detached: true`. Only system
 * calls, no allocation: it runs on the helper's memory. execvp's search over `files`: EACCES is remembered,
 * ENOENT-like errors move on, others stop; a file without a #! line runs with /bin/sh.
 */
static struct {
  int stdin_pipe, in, out, err;
  const char *cwd;
  mode_t mask;
  char **files, **argv, **sh_argv, **env;
} ex;

static __attribute__((noreturn)) void child_exec(void) {
  int e = 0;
  if (setsid() < 0) goto fail;
  if (ex.stdin_pipe) {
    if (dup2(ex.in, 0) < 0) goto fail;
  } else {
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0) goto fail;
    if (null != 0) close(null);
  }
  if (dup2(ex.out, 1) < 0 || dup2(ex.err, 2) < 0) goto fail;
  if (*ex.cwd && chdir(ex.cwd) < 0) goto fail;
  umask(ex.mask);
  struct sigaction dfl = {.sa_handler = SIG_DFL};
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL); /* glibc's own (32, 33) refuse: fine */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  int eacces = 0;
  for (char **f = ex.files; *f; f++) {
    execve(*f, ex.argv, ex.env);
    e = errno;
    if (e == ENOEXEC) {
      ex.sh_argv[1] = *f;
      execve("/bin/sh", ex.sh_argv, ex.env);
      e = errno;
    }
    if (e == EACCES) eacces = 1;
    else if (e != ENOENT && e != ENOTDIR && e != ESTALE && e != ENODEV && e != ETIMEDOUT) break;
  }
  if (eacces && (e == ENOENT || e == ENOTDIR || e == ESTALE || e == ENODEV || e == ETIMEDOUT)) e = EACCES;
  child_errno = e ? e : ENOENT;
  _exit(127);
fail:
  child_errno = errno ? errno : EINVAL;
  _exit(127);
}

/* vfork, kept apart so that no caller's variable lives across it (the child shares them). */
static __attribute__((noinline)) pid_t vfork_exec(void) {
  pid_t pid = vfork();
  if (pid == 0) child_exec();
  return pid;
}

/* A spawn request. Strings are checked to lie within the frame: the frame comes from Cairn, but is parsed
   as if it did not. */
static void do_spawn(uint32_t id, const unsigned char *p, size_t len) {
  if (len < 13) quit(2);
  int stdin_pipe = p[0] & 1;
  mode_t mask = (mode_t)get32(p + 1);
  uint32_t argc = get32(p + 5), envc = get32(p + 9);
  const char *s = (const char *)p + 13, *end = (const char *)p + len;
  if (argc < 1 || argc > len || envc > len) quit(2);
  size_t nstr = 2 + (size_t)argc + envc;
  char **strs = calloc(nstr, sizeof *strs);
  /* argv with a NULL after it, env likewise, and /bin/sh's argv for a file without #!. */
  char **argv = calloc(argc + 1, sizeof *argv), **env = calloc(envc + 1, sizeof *env);
  char **sh_argv = calloc(argc + 2, sizeof *sh_argv);
  if (!strs || !argv || !env || !sh_argv) quit(3);
  for (size_t i = 0; i < nstr; i++) {
    const char *z = memchr(s, 0, (size_t)(end - s));
    if (!z) quit(2);
    strs[i] = (char *)s;
    s = z + 1;
  }
  const char *cmd = strs[0], *cwd = strs[1];
  memcpy(argv, strs + 2, sizeof(char *) * argc);
  memcpy(env, strs + 2 + argc, sizeof(char *) * envc);
  sh_argv[0] = "/bin/sh";
  memcpy(sh_argv + 2, argv + 1, sizeof(char *) * (argc - 1));
  char **files = candidates(cmd, env);

  int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1};
  int e = 0;
  pid_t pid = -1;
  if (!*cmd) e = ENOENT;
  else if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || (stdin_pipe && pipe2(in, O_CLOEXEC))) e = errno;
  else {
    child_errno = 0;
    ex.stdin_pipe = stdin_pipe;
    ex.in = in[0];
    ex.out = out[1];
    ex.err = err[1];
    ex.cwd = cwd;
    ex.mask = mask;
    ex.files = files;
    ex.argv = argv;
    ex.sh_argv = sh_argv;
    ex.env = env;
    pid = vfork_exec();
    if (pid < 0) e = errno;
    else if (child_errno) {
      /* It could not exec and has exited: reaped here, so no exit frame follows. */
      e = child_errno;
      while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
      }
    }
  }
  for (char **f = files; *f; f++) free(*f);
  free(files);
  free(argv);
  free(env);
  free(sh_argv);
  free(strs);
  close_fd(&out[1]);
  close_fd(&err[1]);
  close_fd(&in[0]);
  if (e) {
    close_fd(&out[0]);
    close_fd(&err[0]);
    close_fd(&in[1]);
    send_int('E', id, e);
    return;
  }
  struct child *c = calloc(1, sizeof *c);
  if (!c) quit(3);
  c->id = id;
  c->pid = pid;
  c->out = out[0];
  c->err = err[0];
  c->in = in[1];
  c->input_done = !stdin_pipe;
  if (c->in >= 0) fcntl(c->in, F_SETFL, O_NONBLOCK);
  c->next = children;
  children = c;
  send_int('P', id, pid);
}

static void do_input(uint32_t id, const unsigned char *p, size_t len) {
  struct child *c = find(id);
  if (!c || c->input_done) return; /* it did not start, or its stdin is gone */
  if (len == 0) {
    c->input_done = 1;
    if (!c->input) close_fd(&c->in);
    return;
  }
  if (c->in < 0) return;
  struct chunk *k = malloc(sizeof *k + len);
  if (!k) quit(3);
  k->next = NULL;
  k->len = len;
  k->off = 0;
  memcpy(k->data, p, len);
  if (c->input_tail) c->input_tail->next = k;
  else c->input = k;
  c->input_tail = k;
}

/* Writes queued input while the pipe takes it; a program that closed its stdin gets no more. */
static void feed(struct child *c) {
  while (c->input) {
    struct chunk *k = c->input;
    ssize_t w = write(c->in, k->data + k->off, k->len - k->off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      drop_input(c); /* EPIPE: the exit status is what matters, as with Node's spawn */
      close_fd(&c->in);
      c->input_done = 1;
      return;
    }
    k->off += (size_t)w;
    if (k->off < k->len) return;
    c->input = k->next;
    if (!c->input) c->input_tail = NULL;
    free(k);
  }
  if (c->input_done) close_fd(&c->in);
}

static void relay(struct child *c, int *fd, char type) {
  ssize_t n;
  do n = read(*fd, readbuf, sizeof readbuf);
  while (n < 0 && errno == EINTR);
  if (n > 0) {
    send_frame(type, c->id, readbuf, (size_t)n, NULL, 0);
    if (n >= READ_SIZE && !c->grown) {
      c->grown = 1;
      if (c->out >= 0) fcntl(c->out, F_SETPIPE_SZ, BIG_PIPE); /* best effort: pipe-max-size may be lower */
      if (c->err >= 0) fcntl(c->err, F_SETPIPE_SZ, BIG_PIPE);
    }
    return;
  }
  close_fd(fd);
  send_frame(type, c->id, NULL, 0, NULL, 0);
}

static void reap(void) {
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    struct child *c = children;
    while (c && c->pid != pid) c = c->next;
    if (!c) continue;
    unsigned char p[8];
    put32(p, WIFEXITED(st) ? (uint32_t)WEXITSTATUS(st) : (uint32_t)-1);
    put32(p + 4, WIFSIGNALED(st) ? (uint32_t)WTERMSIG(st) : 0);
    c->exited = 1;
    send_frame('X', c->id, p, 8, NULL, 0);
  }
}

/* Cairn is gone (end of input) or sent garbage. The programs still running are left as Node's spawn leaves
   them: their process groups are Cairn's to end (src/stages/build-processes.ts), which it does before it exits. */
static void quit(int status) { _exit(status); }

/* Requests from Cairn, buffered until whole. */
static unsigned char *req;
static size_t req_len, req_cap;

static void read_requests(void) {
  if (req_cap - req_len < READ_SIZE) {
    req_cap = req_cap ? req_cap * 2 : 4 * READ_SIZE;
    req = realloc(req, req_cap);
    if (!req) quit(3);
  }
  ssize_t n;
  do n = read(0, req + req_len, req_cap - req_len);
  while (n < 0 && errno == EINTR);
  if (n <= 0) quit(0);
  req_len += (size_t)n;
  size_t off = 0;
  while (req_len - off >= 4) {
    uint32_t blen = get32(req + off);
    if (blen < 5 || blen > MAX_FRAME) quit(2);
    if (req_len - off - 4 < blen) {
      /* Room for the rest of a large frame. */
      if (off == 0 && blen + 4 > req_cap) {
        req_cap = blen + 4 + READ_SIZE;
        req = realloc(req, req_cap);
        if (!req) quit(3);
      }
      break;
    }
    const unsigned char *b = req + off + 4;
    uint32_t id = get32(b + 1);
    if (b[0] == 'S') do_spawn(id, b + 5, blen - 5);
    else if (b[0] == 'I') do_input(id, b + 5, blen - 5);
    else quit(2);
    off += 4 + blen;
  }
  memmove(req, req + off, req_len - off);
  req_len -= off;
}

int main(void) {
  /* Descriptors 0-2 must be taken before any pipe is made, or a pipe could become a program's stdio. */
  for (int fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd) return 1;
  struct sigaction ign = {.sa_handler = SIG_IGN};
  sigaction(SIGINT, &ign, NULL);
  sigaction(SIGHUP, &ign, NULL);
  sigaction(SIGPIPE, &ign, NULL);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0) return 1;
  fcntl(1, F_SETPIPE_SZ, BIG_PIPE); /* best effort, as above; fd 1 may be no pipe at all */
  unsigned char v[4];
  put32(v, VERSION);
  send_frame('H', 0, v, 4, NULL, 0);

  struct pollfd *pfs = NULL;
  struct child **who = NULL;
  size_t cap = 0;
  for (;;) {
    size_t n = 2;
    for (struct child *c = children; c; c = c->next) n += 3;
    if (n > cap) {
      cap = n * 2;
      pfs = realloc(pfs, cap * sizeof *pfs);
      who = realloc(who, cap * sizeof *who);
      if (!pfs || !who) quit(3);
    }
    size_t k = 0;
    pfs[k++] = (struct pollfd){.fd = 0, .events = POLLIN};
    pfs[k++] = (struct pollfd){.fd = sigfd, .events = POLLIN};
    for (struct child *c = children; c; c = c->next) {
      if (c->out >= 0) who[k] = c, pfs[k++] = (struct pollfd){.fd = c->out, .events = POLLIN};
      if (c->err >= 0) who[k] = c, pfs[k++] = (struct pollfd){.fd = c->err, .events = POLLIN};
      if (c->in >= 0 && c->input) who[k] = c, pfs[k++] = (struct pollfd){.fd = c->in, .events = POLLOUT};
    }
    flush_small();
    if (poll(pfs, k, -1) < 0) {
      if (errno == EINTR) continue;
      quit(1);
    }
    /* Output first, then exits, then new requests: a program's bytes reach Cairn before its end. */
    for (size_t i = 2; i < k; i++) {
      if (!pfs[i].revents) continue;
      struct child *c = who[i];
      if (pfs[i].fd == c->out) relay(c, &c->out, 'O');
      else if (pfs[i].fd == c->err) relay(c, &c->err, 'R');
      else if (pfs[i].fd == c->in) feed(c);
    }
    if (pfs[1].revents) {
      struct signalfd_siginfo si;
      while (read(sigfd, &si, sizeof si) > 0) {
      }
      reap();
    }
    if (pfs[0].revents) read_requests();
    sweep();
  }
}
