/**
 * The child processes of builds, and what happens to them when cairn stops.
 *
 * Every program a build runs through `exec` starts in a process group of its
 * own (`detached`), so that the whole group (the program and whatever it
 * starts) can be signalled at once, and so that a terminal's Ctrl-C reaches
 * cairn alone: cairn then decides how its builds end, the same way whether
 * the signal came from a terminal, from `kill PID`, or from a server worker's
 * supervisor. Groups are ended with SIGTERM, then SIGKILL after
 * KILL_GRACE_MS. That happens:
 *
 * - when the program itself exits but its group lives on (a background
 *   child holding the build's pipes, say);
 * - when the build function returns or throws while a group still lives;
 * - on SIGINT, SIGTERM or SIGHUP to cairn while a realize runs: cairn then
 *   also ends its other descendants (children a build function started
 *   itself), removes its temporary directories and exits with 128 + the
 *   signal's number (130, 143, 129). A second signal skips the grace;
 * - when the process exits any other way (process.exit in a build, an
 *   uncaught exception), synchronously, from the 'exit' event.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { removeBuildTree } from '../store/mounts.js';
import { spawnHelperPid, startProgram, type ProgramEvents, type ProgramSpec } from './spawn-helper.js';

/** How long a process group has between SIGTERM and SIGKILL. Below the server's 2 s (cli/serve/supervisor.ts). */
export const KILL_GRACE_MS = 1000;
const POLL_MS = 20;
/** How long to wait for SIGKILLed processes to disappear. */
const KILL_WAIT_MS = 500;
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Process groups of running builds' children (each group's id is its first process's pid). */
const groups = new Set<number>();
/** Temporary directories of stores with a realize running here: `tmp` and this process's owner prefix. */
const temps = new Map<object, { tmp: string; owner: string }>();
let interrupted: NodeJS.Signals | undefined;

/** The signal that interrupted this process's builds, if one did: no build may start or publish after it. */
export function interruptedBy(): NodeJS.Signals | undefined {
  return interrupted;
}

/**
 * The process groups of one build's programs. `spawn` starts a program in
 * a group of its own (src/stages/spawn-helper.ts); when the program exits
 * and other members of its group remain, the group is ended. `end` ends
 * what is left when the build is over.
 */
export class BuildGroups {
  private readonly own = new Set<number>();
  /** Programs asked for and not yet started (the helper answers asynchronously): `end` waits for them. */
  private readonly starting = new Set<Promise<void>>();

  spawn(spec: ProgramSpec, on: ProgramEvents): void {
    let pgid: number | undefined;
    let settle!: () => void;
    const start = new Promise<void>((r) => (settle = r));
    this.starting.add(start);
    const started = (): void => {
      this.starting.delete(start);
      settle();
    };
    startProgram(spec, {
      ...on,
      started: (pid) => {
        pgid = pid;
        groups.add(pid);
        this.own.add(pid);
        started();
        on.started(pid);
      },
      error: (e) => {
        started();
        on.error(e);
      },
      exit: (code, signal) => {
        if (pgid !== undefined) {
          const g = pgid;
          if (groupAlive(g)) void this.endSome([g]);
          else this.forget(g);
        }
        on.exit(code, signal);
      },
    });
  }

  /** Ends every group of this build still alive, including programs still starting (a build that did not wait). */
  async end(): Promise<void> {
    while (this.starting.size > 0) await Promise.all([...this.starting]);
    return this.endSome([...this.own]);
  }

  private async endSome(pgids: number[]): Promise<void> {
    await endGroups(pgids);
    for (const g of pgids) this.forget(g);
  }

  private forget(pgid: number): void {
    this.own.delete(pgid);
    groups.delete(pgid);
  }
}

/**
 * Ends the given groups: SIGTERM, then SIGKILL to those still alive after
 * the grace. Resolves when all are gone (or were sent SIGKILL).
 */
async function endGroups(pgids: readonly number[], graceMs = KILL_GRACE_MS): Promise<void> {
  const live = pgids.filter((g) => signalGroup(g, 'SIGTERM'));
  const deadline = Date.now() + graceMs;
  let left = live.filter(groupAlive);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, POLL_MS));
    left = left.filter(groupAlive);
  }
  for (const g of left) signalGroup(g, 'SIGKILL');
  // SIGKILL takes effect at once but not instantly: wait (briefly) until the
  // processes are really gone, so nothing outlives cairn's exit.
  const killDeadline = Date.now() + KILL_WAIT_MS;
  while (left.length > 0 && Date.now() < killDeadline) {
    await new Promise((r) => setTimeout(r, 5));
    left = left.filter(groupAlive);
  }
}

/**
 * Declares a realize running on the store whose temporary directory is
 * `area.dir` (its own entries start with `area.owner-`), and installs the interrupt
 * handlers while any realize runs. Returns the release function.
 */
export function guardRealize(area: { dir: string; owner: string }): () => void {
  const key = {};
  if (temps.size === 0) install();
  temps.set(key, { tmp: area.dir, owner: area.owner });
  return () => {
    if (!temps.delete(key)) return;
    if (temps.size === 0) uninstall();
  };
}

/** While above 0, SIGINT is left to a foreground program cairn waits for (a --break shell). */
let sigintHeld = 0;

/**
 * Runs `fn` with SIGINT ignored by the realize guard: a person at a
 * --break shell presses Ctrl-C for the shell and its programs, which get it
 * from the terminal themselves. SIGTERM and SIGHUP still stop the realize.
 */
export async function holdingInterrupts<T>(fn: () => Promise<T>): Promise<T> {
  sigintHeld++;
  try {
    return await fn();
  } finally {
    sigintHeld--;
  }
}

const onSignal = (sig: NodeJS.Signals): void => {
  if (sig === 'SIGINT' && sigintHeld > 0) return;
  if (interrupted) {
    // A second signal: no more grace.
    void finish(sig, 0);
    return;
  }
  interrupted = sig;
  process.stderr.write(`cairn: ${sig}: stopping builds (SIGTERM, then SIGKILL after ${KILL_GRACE_MS / 1000} s)\n`);
  void finish(sig, KILL_GRACE_MS);
};
const handlers = new Map(SIGNALS.map((s) => [s, () => onSignal(s)] as const));

function install(): void {
  for (const [s, h] of handlers) process.on(s, h);
  process.on('exit', onExit);
}

function uninstall(): void {
  for (const [s, h] of handlers) process.off(s, h);
  process.off('exit', onExit);
}

let finishing: Promise<void> | undefined;
function finish(sig: NodeJS.Signals, graceMs: number): Promise<void> {
  const doExit = (): void => {
    sweepOwnTemps();
    process.exit(128 + (os.constants.signals[sig] ?? 0));
  };
  if (graceMs === 0) {
    for (const g of groups) signalGroup(g, 'SIGKILL');
    for (const p of descendants()) signalPid(p, 'SIGKILL');
    doExit();
  }
  finishing ??= (async () => {
    // Children a build function started itself share this process's group:
    // they are signalled one by one. The spawn helper is left alone: it
    // exits with this process, and in-flight programs' output still passes through it.
    const helper = spawnHelperPid();
    const others = descendants().filter((p) => !groups.has(p) && p !== helper);
    for (const p of others) signalPid(p, 'SIGTERM');
    await endGroups([...groups], graceMs);
    for (const p of others) signalPid(p, 'SIGKILL');
    groups.clear();
    doExit();
  })();
  return finishing;
}

/** The process is exiting with groups still alive: end them now, synchronously. */
function onExit(): void {
  const live = [...groups].filter((g) => signalGroup(g, 'SIGTERM'));
  const wait = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + KILL_GRACE_MS;
  let left = live.filter(groupAlive);
  while (left.length > 0 && Date.now() < deadline) {
    Atomics.wait(wait, 0, 0, POLL_MS);
    left = left.filter(groupAlive);
  }
  for (const g of left) signalGroup(g, 'SIGKILL');
  const killDeadline = Date.now() + KILL_WAIT_MS;
  while (left.length > 0 && Date.now() < killDeadline) {
    Atomics.wait(wait, 0, 0, 5);
    left = left.filter(groupAlive);
  }
  groups.clear();
  sweepOwnTemps();
}

/** Every temporary directory this process made in the guarded stores: garbage once it exits. */
function sweepOwnTemps(): void {
  for (const { tmp, owner } of temps.values()) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(tmp);
    } catch {
      continue;
    }
    for (const n of names) {
      if (!n.startsWith(`${owner}-`)) continue;
      try {
        // Mounts a build made (a chroot's /proc) are detached first: nothing is deleted through one.
        removeBuildTree(path.join(tmp, n));
      } catch {
        /* the next realize sweeps it */
      }
    }
  }
}

function signalGroup(pgid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, sig);
    return true;
  } catch {
    return false;
  }
}

function signalPid(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

interface ProcStat {
  pid: number;
  ppid: number;
  pgrp: number;
  state: string;
}

/** Every process's state, parent and group, from /proc (Linux); null elsewhere. */
function procTable(): ProcStat[] | null {
  let names: string[];
  try {
    names = fs.readdirSync('/proc');
  } catch {
    return null;
  }
  const rows: ProcStat[] = [];
  for (const n of names) {
    if (!/^\d+$/.test(n)) continue;
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${n}/stat`, 'latin1');
    } catch {
      continue;
    }
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    rows.push({ pid: Number(n), state: f[0]!, ppid: Number(f[1]), pgrp: Number(f[2]) });
  }
  return rows;
}

/**
 * Whether a group still has a member that is not a zombie. A zombie cannot
 * be signalled away: it waits for its parent (for a build's program, this
 * process, whose event loop may not be running) to reap it.
 */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  const table = procTable();
  if (table === null) return true;
  return table.some((p) => p.pgrp === pgid && p.state !== 'Z');
}

/** This process's descendants (children build functions started themselves, and theirs); empty without /proc. */
function descendants(): number[] {
  const table = procTable() ?? [];
  const kids = new Map<number, number[]>();
  for (const p of table) {
    if (p.state === 'Z') continue;
    const list = kids.get(p.ppid) ?? [];
    list.push(p.pid);
    kids.set(p.ppid, list);
  }
  const out: number[] = [];
  const queue = [process.pid];
  while (queue.length > 0) {
    for (const k of kids.get(queue.shift()!) ?? []) {
      out.push(k);
      queue.push(k);
    }
  }
  return out;
}
