/*
 * cairn-peer: run by the cairn server (cli/serve/supervisor.ts) with a
 * client's connection as fd 3. It finds the process that connected
 * (SO_PEERPIDFD; SO_PEERCRED and pidfd_open before Linux 6.5) and prints
 * what a worker would have to share with it to run its command as that
 * process would: its namespaces, root, credentials, limits and cgroup
 * (cli/serve/sandbox.ts compares them). Node cannot read a socket's peer
 * credentials itself.
 *
 * Output: NUL-terminated key and value pairs. Nothing is printed (status 1)
 * unless the process was alive after everything was read: a live process
 * keeps its pid, so what was read under /proc/PID was that process's.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

static char out[1 << 16];
static size_t out_len;

static void put(const char *s, size_t n) {
  if (out_len + n + 1 > sizeof out) exit(1);
  memcpy(out + out_len, s, n);
  out_len += n;
  out[out_len++] = 0;
}

static void put_str(const char *s) { put(s, strlen(s)); }

/* A file under /proc/PID, whole. Missing or unreadable files are left out; the comparison counts that
   as a difference. */
static void put_file(int dir, const char *name) {
  int fd = openat(dir, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[16384];
  size_t n = 0;
  ssize_t r = 0;
  while (n < sizeof buf && (r = read(fd, buf + n, sizeof buf - n)) > 0) n += (size_t)r;
  close(fd);
  if (r < 0) return; /* attr/current without a security module: EINVAL, as Node's reader sees it */
  put_str(name);
  put(buf, n);
}

static void put_link(int dir, const char *name) {
  char buf[4096];
  ssize_t n = readlinkat(dir, name, buf, sizeof buf);
  if (n < 0) return;
  put_str(name);
  put(buf, (size_t)n);
}

/* The pid a pidfd refers to, from its fdinfo; <= 0 if it has exited or is outside this pid namespace. */
static long pidfd_pid(int pidfd) {
  char name[64], line[256];
  snprintf(name, sizeof name, "/proc/self/fdinfo/%d", pidfd);
  FILE *f = fopen(name, "r");
  if (!f) return -1;
  long pid = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Pid:\t%ld", &pid) == 1) break;
  fclose(f);
  return pid;
}

int main(void) {
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(3, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) {
    struct ucred cred;
    len = sizeof cred;
    if (getsockopt(3, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0) return 1;
    pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
    if (pidfd < 0) return 1;
  }
  long pid = pidfd_pid(pidfd);
  if (pid <= 0) return 1;
  char name[64];
  snprintf(name, sizeof name, "/proc/%ld", pid);
  int dir = open(name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return 1;
  snprintf(name, sizeof name, "%ld", pid);
  put_str("pid");
  put_str(name);
  int nsfd = openat(dir, "ns", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *ns = nsfd >= 0 ? fdopendir(nsfd) : NULL;
  if (!ns) return 1;
  for (struct dirent *e; (e = readdir(ns));) {
    if (e->d_name[0] == '.') continue;
    char key[300];
    snprintf(key, sizeof key, "ns/%s", e->d_name);
    put_link(dir, key);
  }
  closedir(ns);
  put_link(dir, "root");
  put_file(dir, "status");
  put_file(dir, "limits");
  put_file(dir, "cgroup");
  put_file(dir, "stat");
  put_file(dir, "attr/current");
  /* Still the same process? (A pidfd becomes readable once its process has exited.) */
  struct pollfd p = { .fd = pidfd, .events = POLLIN };
  if (poll(&p, 1, 0) != 0) return 1;
  return fwrite(out, 1, out_len, stdout) == out_len && fflush(stdout) == 0 ? 0 : 1;
}
