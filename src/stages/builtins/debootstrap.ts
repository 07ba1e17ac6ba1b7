import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { checkName } from '../../store/refs.js';
import { stage, type BuildContext, type Stage } from '../stage.js';

export interface DebootstrapSpec {
  /** Debian suite (default `bookworm`). */
  suite?: string;
  /** debootstrap variant (default `minbase`). */
  variant?: 'minbase' | 'buildd' | 'fakechroot' | '-';
  /** Extra packages for debootstrap's `--include` (their dependencies come too). */
  include?: readonly string[];
  /**
   * Packages installed afterwards with `apt-get install` in a chroot, for
   * what `--include` handles badly (packages whose maintainer scripts need
   * /proc, or recommends-heavy sets). Services are never started.
   */
  install?: readonly string[];
  /** Mirror (default `http://deb.debian.org/debian`). Not part of the identity: any mirror serves the same suite. */
  mirror?: string;
  /** Stage name (default `debootstrap-<suite>`). */
  name?: string;
}

export interface DebootstrapConfig {
  suite: string;
  variant: string;
  include: string[];
  install: string[];
}

/** The files of a debootstrap realization: the lead's VM base and the container images rely on exactly these. */
export const ROOTFS_TAR = 'rootfs.tar';
export const PACKAGES_TXT = 'packages.txt';

const PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]+$/;
const SUITE_RE = /^[a-z0-9][a-z0-9.-]*$/;

function checkPackages(what: string, list: readonly string[] | undefined): string[] {
  const out = [...new Set(list ?? [])].sort();
  for (const p of out) {
    if (typeof p !== 'string' || !PACKAGE_RE.test(p))
      throw new CairnError(
        'E_BAD_STAGE_SPEC',
        `debootstrap ${what}: ${JSON.stringify(p)} is not a Debian package name`,
        { package: p },
      );
  }
  return out;
}

/**
 * A Debian root filesystem built with debootstrap, stored as `rootfs.tar`
 * plus `packages.txt` (`dpkg -l` of the result). A tarball, not a tree:
 * a realization may not hold device nodes and is owned by the store's
 * user, while a root filesystem needs /dev entries, root ownership and
 * setuid bits. GNU tar with `--numeric-owner --sort=name` keeps all of
 * them, independent of the host's passwd, in a stable order. Consumers
 * unpack it (`mkfs.ext4 -d`, `docker import`). Needs root.
 */
export function debootstrap(spec: DebootstrapSpec = {}): Stage<DebootstrapConfig> {
  const suite = spec.suite ?? 'bookworm';
  if (!SUITE_RE.test(suite))
    throw new CairnError('E_BAD_STAGE_SPEC', `debootstrap: suite ${JSON.stringify(suite)} is not a suite name`, {
      suite,
    });
  const variant = spec.variant ?? 'minbase';
  const mirror = spec.mirror ?? 'http://deb.debian.org/debian';
  return stage({
    name: checkName(spec.name ?? `debootstrap-${suite}`),
    config: {
      suite,
      variant,
      include: checkPackages('include', spec.include),
      install: checkPackages('install', spec.install),
    },
    outputs: [ROOTFS_TAR, PACKAGES_TXT],
    // The identity is the suite, variant and package lists: the mirror and
    // this builder's code may change without invalidating existing roots.
    version: 'cairn-debootstrap-1',
    build: (ctx) => buildRootfs(ctx, mirror),
  });
}

async function buildRootfs(ctx: BuildContext<DebootstrapConfig>, mirror: string): Promise<void> {
  const { config, out, log } = ctx;
  if (process.getuid?.() !== 0)
    throw new CairnError('E_BUILD_FAILED', 'debootstrap needs root (device nodes, chroot, file ownership)');
  // ctx.tmp is on the store's filesystem and is deleted after the build,
  // device nodes included.
  const root = path.join(ctx.tmp, 'root');
  const args = [`--variant=${config.variant}`];
  if (config.variant === '-') args.pop();
  if (config.include.length > 0) args.push(`--include=${config.include.join(',')}`);
  const t0 = performance.now();
  // debootstrap mounts /proc and /sys in the new root and unmounts them only if it exits normally.
  await ctx.exec(...inPrivateMounts('debootstrap', [...args, config.suite, root, mirror]));
  log(`debootstrap ${config.suite} took ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  if (config.install.length > 0) await chrootInstall(ctx, root, config.install);
  // Downloaded .debs and apt lists are caches: they only make the tarball bigger.
  for (const dir of ['var/cache/apt/archives', 'var/lib/apt/lists']) {
    const abs = path.join(root, dir);
    for (const ent of fs.existsSync(abs) ? fs.readdirSync(abs, { withFileTypes: true }) : []) {
      if (ent.isFile() && ent.name !== 'lock') fs.rmSync(path.join(abs, ent.name), { force: true });
    }
  }
  const list = await ctx.exec('dpkg-query', [`--admindir=${path.join(root, 'var/lib/dpkg')}`, '-l']);
  fs.writeFileSync(path.join(out, PACKAGES_TXT), list.stdout);
  await ctx.exec('tar', [
    '--create',
    '--file',
    path.join(out, ROOTFS_TAR),
    '--numeric-owner',
    '--sort=name',
    '--xattrs',
    '--xattrs-include=*',
    '-C',
    root,
    '.',
  ]);
  log(`rootfs.tar: ${(fs.statSync(path.join(out, ROOTFS_TAR)).size / 2 ** 20).toFixed(1)} MiB`);
}

/**
 * `cmd args` run in a mount namespace of its own (`unshare --mount`, whose
 * propagation is private): what it mounts is invisible outside and goes
 * away with its last process, so a build killed at any moment (SIGINT,
 * SIGTERM, kill -9) leaves nothing mounted under the store's tmp/.
 */
export function inPrivateMounts(cmd: string, args: readonly string[]): [string, string[]] {
  return ['unshare', ['--mount', '--propagation', 'private', '--', cmd, ...args]];
}

/** The script that installs packages in the chroot; `$0` is the root, the packages follow. */
const CHROOT_INSTALL = [
  'mount -t proc proc "$0/proc"',
  'chroot "$0" apt-get update -q',
  'chroot "$0" apt-get install -y -q --no-install-recommends "$@"',
  'chroot "$0" apt-get clean',
].join('\n');

/**
 * `apt-get install` inside the new root, with /proc mounted for maintainer
 * scripts, all in one private mount namespace (see inPrivateMounts): the
 * mount ends with the script, however the script ends.
 */
async function chrootInstall(
  ctx: BuildContext<DebootstrapConfig>,
  root: string,
  packages: readonly string[],
): Promise<void> {
  // policy-rc.d exit 101 tells invoke-rc.d not to start services in the chroot.
  const policy = path.join(root, 'usr/sbin/policy-rc.d');
  fs.writeFileSync(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' };
    await ctx.exec(...inPrivateMounts('sh', ['-ec', CHROOT_INSTALL, root, ...packages]), { env });
  } finally {
    fs.rmSync(policy, { force: true });
  }
}
