#!/usr/bin/env bash
# Installs the Debian packages that Cairn's tests use, if any is missing.
# Needs root (apt-get) on a fresh machine; fails, never skips, when a
# component cannot be had.
set -euo pipefail

# mkfifo/mknod/dd (coreutils), mkfs.ext4 (e2fsprogs), mount/umount with
# loop devices (mount), xz/bzip2/zstd and ar/dpkg-deb for archives, QEMU for
# the machine tests, dpkg-scanpackages for the apt repository a guest
# installs from (test/machine-net.test.ts), mkfs.xfs for reflink clones on a loop-mounted XFS,
# debootstrap for the debian bases and container images, the Docker engine
# for containers and services, rsync + ssh/sshd + ip (network namespaces)
# for multi-host sync, a C++ toolchain for better-sqlite3, which has no
# prebuilt binary for this platform, and a C compiler for the `cairn` client
# (cli/client/cairn.c). useradd, setpriv, unshare, prlimit and chattr: the
# trust-boundary tests (another user, other namespaces and limits, an
# immutable leftover); setcap/getcap: file capabilities on a build's output.
# A single-node OpenStack Swift (its s3api is the S3 the cache tests use) with
# memcached, nginx serving a cache over HTTP, rclone (the cache benchmark's
# yardstick and scripts/swift.sh's S3 probe) and curl (scripts/nginx.sh).
# Graphviz's dot (cairn graph --format svg), Chromium (the web view's tests,
# driven by playwright-core), and a single-node Slurm with munge (the Slurm
# builder's tests, scripts/slurm.sh).
tools="mkfifo:coreutils mknod:coreutils dd:coreutils mkfs.ext4:e2fsprogs mount:mount umount:mount \
    xz:xz-utils bzip2:bzip2 zstd:zstd ar:binutils dpkg-deb:dpkg dpkg-scanpackages:dpkg-dev \
    qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils \
    mkfs.xfs:xfsprogs debootstrap:debootstrap dockerd:docker.io docker:docker.io \
    rsync:rsync ssh:openssh-client sshd:openssh-server ip:iproute2 \
    make:make g++:g++ cc:gcc python3:python3 \
    useradd:passwd userdel:passwd setpriv:util-linux unshare:util-linux prlimit:util-linux chattr:e2fsprogs \
    setcap:libcap2-bin getcap:libcap2-bin \
    swift-ring-builder:swift swift-proxy-server:swift-proxy swift-account-server:swift-account \
    swift-container-server:swift-container swift-object-server:swift-object memcached:memcached \
    nginx:nginx rclone:rclone curl:curl \
    dot:graphviz chromium:chromium slurmctld:slurmctld slurmd:slurmd srun:slurm-client sbatch:slurm-client \
    munged:munge"
missing() {
  need=()
  for tool in $tools; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
  done
}
missing
[ ${#need[@]} -eq 0 ] && exit 0

packages=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: $packages(run as root, or: sudo apt-get install $packages)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q $packages

# A package that installed without its tool (renamed, split) fails here, not in a test.
missing
if [ ${#need[@]} -ne 0 ]; then
  echo "still missing after apt-get install: $(printf '%s ' "${need[@]}" | tr ' ' '\n' | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
