/**
 * A Store whose backend is opened on first use: a substituter must be a
 * Store as soon as realize is set up, but opening a cache (its backend, its
 * cache-info object) is asynchronous and may fail. Every call waits for the
 * opening; a failed opening rejects every call with its error, which realize
 * turns into one warning and local builds.
 */
import type { Readable } from 'node:stream';
import type {
  AddOptions,
  AddRequest,
  Added,
  Candidate,
  HeldLock,
  LockOptions,
  RealizationInfo,
  RealizationMeta,
  Store,
  TempRoots,
} from '../interface.js';
import type { DRef, RRef } from '../refs.js';

export class LazyStore implements Store {
  private readonly opened: Promise<Store>;
  private closed = false;

  constructor(
    readonly location: string,
    open: () => Promise<Store>,
  ) {
    this.opened = open();
    // Nobody may ever call it: an opening that fails unobserved is not an unhandled rejection.
    this.opened.catch(() => undefined);
  }

  private async s(): Promise<Store> {
    return this.opened;
  }

  async candidates(dref: DRef, ctx: string): Promise<Candidate[]> {
    return (await this.s()).candidates(dref, ctx);
  }
  async candidatesOfAll(drefs: readonly DRef[]): Promise<Map<string, Candidate[]>> {
    return (await this.s()).candidatesOfAll(drefs);
  }
  async realizationsOf(dref: DRef): Promise<RealizationInfo[]> {
    return (await this.s()).realizationsOf(dref);
  }
  async info(rref: RRef): Promise<RealizationInfo | undefined> {
    return (await this.s()).info(rref);
  }
  async meta(rref: RRef): Promise<RealizationMeta> {
    return (await this.s()).meta(rref);
  }
  async closure(rrefs: Iterable<RRef>): Promise<RRef[]> {
    return (await this.s()).closure(rrefs);
  }
  async derivation(dref: DRef): Promise<string | undefined> {
    return (await this.s()).derivation(dref);
  }
  async readFile(rref: RRef, rel: string | Buffer): Promise<Buffer> {
    return (await this.s()).readFile(rref, rel);
  }
  async openFile(rref: RRef, rel: string | Buffer): Promise<Readable> {
    return (await this.s()).openFile(rref, rel);
  }
  async readLog(rref: RRef): Promise<Buffer> {
    return (await this.s()).readLog(rref);
  }
  async add(request: AddRequest, opts?: AddOptions): Promise<Added[]> {
    return (await this.s()).add(request, opts);
  }
  async addTempRoots(drefs: readonly DRef[], label: string): Promise<TempRoots> {
    return (await this.s()).addTempRoots(drefs, label);
  }
  async withLock<T>(key: string, what: string, fn: (held: HeldLock) => Promise<T>, opts?: LockOptions): Promise<T> {
    return (await this.s()).withLock(key, what, fn, opts);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.opened.then(
      (s) => s.close(),
      () => undefined,
    );
  }
}
