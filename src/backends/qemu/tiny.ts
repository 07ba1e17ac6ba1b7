/**
 * The `tiny` machine base, built reproducibly from Debian packages:
 * a cloud kernel (`linux-image-*-cloud-amd64`) and an initramfs made of
 * busybox-static, a few virtio modules from the kernel package, and an
 * `/init` script that mounts proc/sys/dev/tmp, mounts `/dev/vda` on `/mnt`
 * when a disk is attached, and runs a shell on the serial console.
 *
 * The initramfs is an uncompressed cpio "newc" archive written here (not
 * by cpio(1)) with sorted entries, uid/gid 0, mtime 0 and fixed inode
 * numbers, so the same .deb files always give the same bytes. These
 * functions are what a later `machine-base` stage's build function calls.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Downloads .deb files with `apt-get download` into `dir`; returns their paths, in argument order. */
export async function aptDownload(packages: readonly string[], dir: string): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  await execFileP('apt-get', ['download', ...packages], { cwd: dir, maxBuffer: 16 << 20 });
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.deb'));
  return packages.map((p) => {
    const name = p.split('=')[0]!;
    const hit = files.find((f) => f.startsWith(`${name}_`));
    if (!hit) throw new Error(`apt-get download ${p}: no ${name}_*.deb in ${dir}`);
    return path.join(dir, hit);
  });
}

/** Extracts a .deb's data into `dir` (`dpkg-deb -x`). */
export async function extractDeb(deb: string, dir: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await execFileP('dpkg-deb', ['-x', deb, dir], { maxBuffer: 16 << 20 });
}

export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'chardev';
  /** Permission bits (default 0o755 for dirs and files, 0o777 for symlinks, 0o600 for devices). */
  mode?: number;
  data?: Buffer;
  /** Symlink target. */
  target?: string;
  /** Device numbers for `chardev`. */
  major?: number;
  minor?: number;
}

const TYPE_BITS = { file: 0o100000, dir: 0o040000, symlink: 0o120000, chardev: 0o020000 } as const;

/**
 * Writes a cpio newc archive: entries sorted by path (parents first),
 * every timestamp and owner zero. Missing parent directories are added.
 */
export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const byPath = new Map<string, CpioEntry>();
  for (const e of entries) {
    const p = e.path.replace(/^\/+/, '').replace(/\/+$/, '');
    if (!p) continue;
    byPath.set(p, { ...e, path: p });
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!byPath.has(dir)) byPath.set(dir, { path: dir, type: 'dir' });
    }
  }
  const sorted = [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const chunks: Buffer[] = [];
  let offset = 0;
  const push = (b: Buffer): void => {
    chunks.push(b);
    offset += b.length;
  };
  const pad4 = (): void => {
    const r = offset % 4;
    if (r) push(Buffer.alloc(4 - r));
  };
  const hex = (n: number): string => n.toString(16).padStart(8, '0');
  let ino = 1;
  const header = (name: string, mode: number, size: number, nlink: number, rmajor: number, rminor: number): void => {
    const nameBuf = Buffer.from(name + '\0');
    const fields = [
      '070701',
      hex(ino++),
      hex(mode),
      hex(0),
      hex(0),
      hex(nlink),
      hex(0),
      hex(size),
      hex(0),
      hex(0),
      hex(rmajor),
      hex(rminor),
      hex(nameBuf.length),
      hex(0),
    ];
    push(Buffer.from(fields.join('')));
    push(nameBuf);
    pad4();
  };
  for (const e of sorted) {
    let data: Buffer = Buffer.alloc(0);
    let perm: number;
    if (e.type === 'file') {
      data = e.data ?? Buffer.alloc(0);
      perm = e.mode ?? 0o755;
    } else if (e.type === 'symlink') {
      data = Buffer.from(e.target ?? '');
      perm = e.mode ?? 0o777;
    } else if (e.type === 'dir') {
      perm = e.mode ?? 0o755;
    } else {
      perm = e.mode ?? 0o600;
    }
    header(e.path, TYPE_BITS[e.type] | perm, data.length, e.type === 'dir' ? 2 : 1, e.major ?? 0, e.minor ?? 0);
    if (data.length) {
      push(data);
      pad4();
    }
  }
  ino = 0;
  header('TRAILER!!!', 0, 0, 1, 0, 0);
  return Buffer.concat(chunks);
}

/** The kernel modules (in load order) that give a Debian cloud kernel a virtio disk. */
export const VIRTIO_BLK_MODULES = [
  'kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
  'kernel/drivers/virtio/virtio_pci_legacy_dev.ko',
  'kernel/drivers/virtio/virtio_pci.ko',
  'kernel/drivers/block/virtio_blk.ko',
] as const;

/**
 * The modules (in load order, after the virtio ones) of the virtio network
 * card. Loaded whether or not a card is attached, so one initramfs boots
 * both; with no card they cost a few milliseconds.
 */
export const VIRTIO_NET_MODULES = [
  'kernel/net/core/failover.ko',
  'kernel/drivers/net/net_failover.ko',
  'kernel/drivers/net/virtio_net.ko',
] as const;

/**
 * The tiny guest's /init. Prints `CAIRN-TINY-READY` right before the first shell.
 * With `cairn.root=DEV` on the kernel command line it is a boot loader
 * instead: the cloud kernel has ext4 built in but virtio_blk as a module,
 * so this initramfs loads the modules, mounts DEV and `switch_root`s to the
 * root filesystem's `/sbin/cairn-init` (the debian base), which mounts the
 * pseudo filesystems itself (they are unmounted here, not moved, so the
 * new root starts from a clean slate).
 */
export const TINY_INIT =
  `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp /mnt /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in /lib/cairn-modules/*.ko; do [ -e "$m" ] && insmod "$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 20 ] && ls /lib/cairn-modules/*.ko >/dev/null 2>&1 && grep -q 0x1af4 ` +
  `/sys/bus/pci/devices/*/vendor 2>/dev/null; do sleep 0.1; i=$((i+1)); done
# The network (a machine started with one): a static address on slirp's
# network, set before a switch_root too, since the addresses and routes
# belong to the kernel and Debian minbase has no ip(8).
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
  echo 'nameserver 10.0.2.3' > /etc/resolv.conf
fi
root=
for w in $(cat /proc/cmdline); do case "$w" in cairn.root=*) root=\${w#cairn.root=};; esac; done
if [ -n "$root" ]; then
  mkdir -p /newroot
  if mount -t ext4 "$root" /newroot && [ -x /newroot/sbin/cairn-init ]; then
    umount /proc /sys /tmp /dev
    exec switch_root /newroot /sbin/cairn-init
  fi
  echo "cairn: cannot boot from $root (no ext4 with /sbin/cairn-init); staying in the initramfs"
elif [ -b /dev/vda ]; then mount -t ext4 /dev/vda /mnt 2>/dev/null || echo "cairn: /dev/vda not mounted"; fi
export HOME=/root PS1='cairn# '
cd /root
echo CAIRN-TINY-READY
while true; do setsid cttyhack /bin/sh -i; done
`;

export interface TinyInitramfsOptions {
  /** busybox-static .deb. */
  busyboxDeb: string;
  /** The kernel .deb, to take the virtio modules from (optional: without it, no disk support). */
  kernelDeb?: string;
  /** Scratch directory (created; the caller removes it). */
  tmp: string;
  /** Output path of the cpio archive. */
  out: string;
}

/** Builds the tiny initramfs; returns its sha256. Same inputs, same bytes. */
export async function buildTinyInitramfs(opts: TinyInitramfsOptions): Promise<string> {
  const bbRoot = path.join(opts.tmp, 'busybox');
  await extractDeb(opts.busyboxDeb, bbRoot);
  const busybox = fs.readFileSync(path.join(bbRoot, 'bin', 'busybox'));
  const { stdout } = await execFileP(path.join(bbRoot, 'bin', 'busybox'), ['--list-full']);
  const entries: CpioEntry[] = [
    { path: 'bin/busybox', type: 'file', data: busybox },
    { path: 'init', type: 'file', data: Buffer.from(TINY_INIT) },
    { path: 'dev/console', type: 'chardev', major: 5, minor: 1 },
    { path: 'dev/ttyS0', type: 'chardev', major: 4, minor: 64 },
    { path: 'dev/null', type: 'chardev', major: 1, minor: 3, mode: 0o666 },
    ...['proc', 'sys', 'tmp', 'mnt', 'root', 'etc', 'lib/cairn-modules'].map((p): CpioEntry => ({
      path: p,
      type: 'dir',
    })),
  ];
  for (const applet of stdout
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)) {
    if (applet === 'bin/busybox' || applet === 'init' || applet === 'linuxrc') continue;
    entries.push({ path: applet, type: 'symlink', target: '/bin/busybox' });
  }
  if (opts.kernelDeb) {
    const kRoot = path.join(opts.tmp, 'kernel');
    await extractDeb(opts.kernelDeb, kRoot);
    const modRoot = path.join(kRoot, 'lib', 'modules');
    const [version] = fs.readdirSync(modRoot);
    if (!version) throw new Error(`${opts.kernelDeb}: no lib/modules/<version>`);
    VIRTIO_BLK_MODULES.forEach((rel, i) => {
      const file = path.join(modRoot, version, rel);
      if (fs.existsSync(file)) {
        entries.push({
          path: `lib/cairn-modules/${String(i).padStart(2, '0')}-${path.basename(rel)}`,
          type: 'file',
          mode: 0o644,
          data: fs.readFileSync(file),
        });
      }
    });
    VIRTIO_NET_MODULES.forEach((rel, i) => {
      const file = path.join(modRoot, version, rel);
      if (!fs.existsSync(file)) throw new Error(`${opts.kernelDeb}: no ${rel}`);
      entries.push({
        path: `lib/cairn-modules/5${i}-${path.basename(rel)}`,
        type: 'file',
        mode: 0o644,
        data: fs.readFileSync(file),
      });
    });
  }
  const archive = cpioNewc(entries);
  fs.mkdirSync(path.dirname(opts.out), { recursive: true });
  fs.writeFileSync(opts.out, archive);
  return createHash('sha256').update(archive).digest('hex');
}

/** Copies the kernel image (`boot/vmlinuz-*`) out of a kernel .deb; returns the kernel version. */
export async function extractKernel(kernelDeb: string, tmp: string, out: string): Promise<string> {
  const root = path.join(tmp, 'kernel-image');
  await extractDeb(kernelDeb, root);
  const vmlinuz = fs.readdirSync(path.join(root, 'boot')).find((f) => f.startsWith('vmlinuz-'));
  if (!vmlinuz) throw new Error(`${kernelDeb}: no boot/vmlinuz-*`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.copyFileSync(path.join(root, 'boot', vmlinuz), out);
  return vmlinuz.slice('vmlinuz-'.length);
}

export interface TinyBase {
  kernel: string;
  initramfs: string;
  kernelVersion: string;
  initramfsSha256: string;
}

/**
 * Downloads busybox-static and the cloud kernel with apt-get and builds the
 * tiny base into `outDir` (`vmlinuz`, `initramfs.cpio`).
 */
export async function buildTinyBase(
  outDir: string,
  tmp: string,
  packages = { kernel: 'linux-image-cloud-amd64', busybox: 'busybox-static' },
): Promise<TinyBase> {
  let kernelPkg = packages.kernel;
  if (kernelPkg === 'linux-image-cloud-amd64') {
    // The metapackage has no kernel; follow it to the versioned image package.
    const { stdout } = await execFileP('apt-cache', ['depends', kernelPkg]);
    const m = /Depends:\s*(linux-image-\S+-cloud-amd64)/.exec(stdout);
    if (!m) throw new Error(`apt-cache depends ${kernelPkg}: no linux-image dependency`);
    kernelPkg = m[1]!;
  }
  const [kernelDeb, busyboxDeb] = await aptDownload([kernelPkg, packages.busybox], path.join(tmp, 'debs'));
  const kernel = path.join(outDir, 'vmlinuz');
  const initramfs = path.join(outDir, 'initramfs.cpio');
  const kernelVersion = await extractKernel(kernelDeb!, tmp, kernel);
  const initramfsSha256 = await buildTinyInitramfs({
    busyboxDeb: busyboxDeb!,
    kernelDeb: kernelDeb!,
    tmp,
    out: initramfs,
  });
  return { kernel, initramfs, kernelVersion, initramfsSha256 };
}
