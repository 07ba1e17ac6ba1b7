/**
 * What every machine backend (QEMU VMs, Docker containers) provides to the
 * machine pipeline in src/stages/machine.ts. A machine *state* is a plain
 * realization: its `out/` holds `machine.json` (a MachineDescription) plus
 * whatever files the backend needs to resume it (disk image and memory
 * snapshot, or an image tarball). The pipeline never looks inside those
 * files; it only asks the backend to resume a state into a private working
 * directory, and to save a running machine into a new output directory.
 */
import type { ActiveForward, PortForward } from './qemu/net.js';

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface ExecOptions {
  /** Default 60 s. A timeout rejects with E_MACHINE_TIMEOUT. */
  timeoutMs?: number;
  /** Reject with E_MACHINE_EXEC when the exit code is not 0 (default false). */
  check?: boolean;
  /**
   * Run in the machine's long-lived shell instead of a child of it, so `cd`
   * and variables persist to later commands (and are saved with the
   * state). `exit` then ends that shell; by default it just ends the command.
   */
  shell?: boolean;
  /**
   * Called with stdout as it arrives, so a long command's output can be shown
   * while it runs (the result's `stdout` still has all of it). A backend that
   * cannot stream never calls it.
   */
  onStdout?(text: string): void;
}

/** A line-oriented console: the serial port of a VM, a shell in a container. */
export interface MachineConsole {
  send(text: string): Promise<void>;
  /** Waits until the output after the last match matches `re`, returns the matched text. */
  expect(re: RegExp, timeoutMs?: number): Promise<string>;
  /**
   * Connects a terminal: `input` goes to the machine, its output to
   * `output`, until `input` ends or sends Ctrl-] (0x1d). Backends without
   * an interactive console leave it out.
   */
  attach?(input: NodeJS.ReadableStream, output: NodeJS.WritableStream): Promise<void>;
}

/** The machine as a step (or `use()`) sees it while it runs. */
export interface RunningMachine {
  readonly backend: string;
  exec(cmd: string, opts?: ExecOptions): Promise<ExecResult>;
  readonly console: MachineConsole;
  /** Copies a host file or directory into the machine. */
  upload(hostPath: string, machinePath: string): Promise<void>;
  /** Copies a file or directory out of the machine. */
  download(machinePath: string, hostPath: string): Promise<void>;
  /**
   * Port forwards host -> machine of this run, with the host ports bound
   * (those given as 0 are chosen per run). Backends without them leave it out.
   */
  readonly forwards?: readonly ActiveForward[];
  /** Adds a port forward to the running machine; returns it with the host port bound. */
  forward?(f: PortForward | number | string): Promise<ActiveForward>;
}

/** Per-run settings of a resumed machine: not part of any state. */
export interface ResumeOptions {
  forwards?: readonly PortForward[];
}

/** Backend-owned fields of machine.json; the pipeline adds its own (see MachineDescription). */
export type BackendState = Record<string, unknown> & { backend: string };

/** A machine resumed from a state, owned by the pipeline until save() or discard(). */
export interface BackendSession {
  readonly machine: RunningMachine;
  /**
   * Freezes the machine and writes everything needed to resume it into
   * `outDir` (which exists and is empty), then stops it. `finalDir` is a
   * path at the same depth in the store as the directory `outDir` will be
   * renamed to: references to other realizations (a qcow2 backing file, a
   * kernel) are written relative to it, so they survive the rename, a moved
   * store and a sync to another host. Returns the backend's fields for
   * machine.json.
   */
  save(outDir: string, finalDir: string): Promise<BackendState>;
  /** Stops the machine and throws away what it wrote. Never throws. */
  discard(): Promise<void>;
}

export interface MachineBackend {
  readonly kind: string;
  /**
   * Resumes the state saved in `stateDir` (a realization's out/, read-only)
   * with a writable copy of its disk in `workDir` (empty, on the store's
   * filesystem, deleted by the caller afterwards). Saved states are never
   * modified.
   */
  resume(stateDir: string, state: BackendState, workDir: string, opts?: ResumeOptions): Promise<BackendSession>;
}
