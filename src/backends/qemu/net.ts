/**
 * The guest network of QEMU machines: QEMU's user-mode network (slirp) on a
 * virtio-net card. The guest is 10.0.2.15/24 with the gateway 10.0.2.2
 * (the host's loopback, as slirp maps it) and the DNS relay 10.0.2.3; the
 * initramfs configures the card statically (no DHCP wait on boot or resume).
 *
 * What a state records is only the mode: the device set must be the same
 * at save and restore, and a guest that had a network is another machine.
 * Port forwards (`hostfwd`) are slirp settings, not device state, so they
 * are chosen per session: a host port of 0 lets slirp pick a free one,
 * which is read back from `info usernet`.
 */
import { CairnError } from '../../errors.js';

/** `user`: the guest reaches the host (10.0.2.2) and, where the host can, the outside. `restrict`: nothing. */
export type NetMode = 'user' | 'restrict';

export interface PortForward {
  proto: 'tcp' | 'udp';
  /** 0: chosen per session (see `vm.forwards`). */
  hostPort: number;
  guestPort: number;
}

/** A forward as it runs: the host port is the one actually bound. */
export interface ActiveForward extends PortForward {
  hostAddr: string;
}

/** `{ net: ... }` of a base: true (= 'user'), a mode, or a mode with port forwards. */
export type NetOption =
  boolean | NetMode | { mode?: NetMode; restrict?: boolean; forward?: readonly (PortForward | number | string)[] };

export const GUEST_IP = '10.0.2.15';
export const HOST_IP = '10.0.2.2';
export const GUEST_MAC = '52:54:00:12:34:56';
const NETDEV_ID = 'net0';

const bad = (msg: string): CairnError => new CairnError('E_BAD_ARGUMENT', `net: ${msg}`);

const port = (v: unknown, what: string, zeroOk: boolean): number => {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < (zeroOk ? 0 : 1) || n > 65535)
    throw bad(`${what} must be a port number (${zeroOk ? 0 : 1}-65535), not ${JSON.stringify(v)}`);
  return n;
};

/** `[tcp:|udp:][HOSTPORT:]GUESTPORT`, e.g. `80`, `8080:80`, `udp:5353:53`. */
export function parseForward(spec: PortForward | number | string): PortForward {
  if (typeof spec === 'number') return { proto: 'tcp', hostPort: 0, guestPort: port(spec, 'a guest port', false) };
  if (typeof spec === 'object' && spec !== null) {
    const proto = spec.proto ?? 'tcp';
    if (proto !== 'tcp' && proto !== 'udp') throw bad(`a forward's proto is tcp or udp, not ${JSON.stringify(proto)}`);
    return {
      proto,
      hostPort: port(spec.hostPort ?? 0, 'hostPort', true),
      guestPort: port(spec.guestPort, 'guestPort', false),
    };
  }
  const m = typeof spec === 'string' ? /^(?:(tcp|udp):)?(?:(\d+):)?(\d+)$/.exec(spec) : null;
  if (!m) throw bad(`a forward is [tcp:|udp:][HOSTPORT:]GUESTPORT, not ${JSON.stringify(spec)}`);
  return {
    proto: (m[1] ?? 'tcp') as 'tcp' | 'udp',
    hostPort: port(m[2] ?? '0', 'the host port', true),
    guestPort: port(m[3], 'the guest port', false),
  };
}

/** The mode (part of a base's identity) and the forwards (per session) of a `net` option. */
export function parseNetOption(net: NetOption | undefined): { mode: NetMode | null; forwards: PortForward[] } {
  if (net === undefined || net === false) return { mode: null, forwards: [] };
  if (net === true || net === 'user') return { mode: 'user', forwards: [] };
  if (net === 'restrict') return { mode: 'restrict', forwards: [] };
  if (typeof net !== 'object' || net === null || Array.isArray(net))
    throw bad(`expected true, 'user', 'restrict' or { mode, forward }, not ${JSON.stringify(net)}`);
  if (net.mode !== undefined && net.mode !== 'user' && net.mode !== 'restrict')
    throw bad(`mode is 'user' or 'restrict', not ${JSON.stringify(net.mode)}`);
  if (net.restrict !== undefined && typeof net.restrict !== 'boolean') throw bad('restrict must be a boolean');
  if (net.mode === 'user' && net.restrict) throw bad("mode 'user' and restrict: true contradict each other");
  if (net.forward !== undefined && !Array.isArray(net.forward)) throw bad('forward must be an array');
  const forwards = (net.forward ?? []).map(parseForward);
  checkForwards(forwards);
  return { mode: net.restrict ? 'restrict' : (net.mode ?? 'user'), forwards };
}

/** Two forwards to one guest port, or two from one fixed host port, cannot be told apart or bound. */
export function checkForwards(forwards: readonly PortForward[]): void {
  const seen = new Set<string>();
  const once = (key: string, what: string): void => {
    if (seen.has(key)) throw bad(`two forwards use ${what}`);
    seen.add(key);
  };
  for (const f of forwards) {
    once(`${f.proto} guest ${f.guestPort}`, `${f.proto} guest port ${f.guestPort}`);
    if (f.hostPort) once(`${f.proto} host ${f.hostPort}`, `${f.proto} host port ${f.hostPort}`);
  }
}

/**
 * QEMU arguments for the network. The card has a fixed MAC (part of the
 * saved device state) and no option ROM: the kernel is booted directly,
 * and a ROM would only slow the start and tie states to the ipxe package.
 * Forwards listen on the host's loopback only.
 */
export function netArgs(mode: NetMode, forwards: readonly PortForward[]): string[] {
  const opts = [`user,id=${NETDEV_ID}`];
  if (mode === 'restrict') opts.push('restrict=on');
  for (const f of forwards) opts.push(`hostfwd=${f.proto}:127.0.0.1:${f.hostPort}-:${f.guestPort}`);
  return ['-netdev', opts.join(','), '-device', `virtio-net-pci,netdev=${NETDEV_ID},mac=${GUEST_MAC},romfile=`];
}

/** The forwards slirp reports (`info usernet`): the host ports actually bound. */
export function parseUsernet(text: string): ActiveForward[] {
  const out: ActiveForward[] = [];
  const re = /^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)/gm;
  for (let m; (m = re.exec(text));) {
    out.push({
      proto: m[1]!.toLowerCase() as 'tcp' | 'udp',
      hostAddr: m[2]!,
      hostPort: Number(m[3]),
      guestPort: Number(m[4]),
    });
  }
  return out;
}

/** The wanted forwards, each with the host port slirp bound for it. */
export function matchForwards(wanted: readonly PortForward[], active: readonly ActiveForward[]): ActiveForward[] {
  return wanted.map((w) => {
    const hit = active.find((a) => a.proto === w.proto && a.guestPort === w.guestPort);
    if (!hit) throw new Error(`slirp reports no ${w.proto} forward to guest port ${w.guestPort}`);
    return hit;
  });
}

/** `tcp 127.0.0.1:41234 -> guest port 80`: how the CLI and build logs show a forward. */
export function describeForward(f: ActiveForward): string {
  return `${f.proto} ${f.hostAddr}:${f.hostPort} -> guest port ${f.guestPort}`;
}
