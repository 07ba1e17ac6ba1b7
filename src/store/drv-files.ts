import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fsyncAll, removeTree } from './fsutil.js';
import type { StoreIndex } from './index-db.js';
import type { DRef } from './refs.js';

/**
 * Writes `d/<dref>/{drv.json,r/}` asynchronously, in libuv's thread pool,
 * so a realize can write the derivations it is about to build ahead of the
 * builds (`writeAhead`, as nix-instantiate writes .drv files before
 * nix-store builds them) instead of between a build and its publication.
 *
 * A derivation directory is staged in `tmp/` and renamed into place whole,
 * so a kill leaves all of it or none. It is made durable by the fsync round
 * of its first realization (`ensure` returns the paths), and its index row
 * is added with that realization (`Store.record`): the index names only
 * durable derivations. Those written ahead whose build never came are
 * fsynced and indexed by `settle`, so gc can collect them.
 */
export class DrvFiles {
  /** Derivations placed (or being placed) by this process and not yet indexed. */
  private readonly placed = new Map<DRef, { name: string; done: Promise<void> }>();

  constructor(
    private readonly root: string,
    private readonly owner: string,
    private readonly index: StoreIndex,
  ) {}

  dir(dref: DRef): string { return path.join(this.root, 'd', dref); }

  /**
   * Makes sure the derivation is on disk; returns the paths to fsync before
   * a realization of it is published (none once it is indexed).
   */
  async ensure(dref: DRef, name: string, drvJson: string): Promise<string[]> {
    const p = this.placed.get(dref);
    if (p) await p.done;
    else if (this.index.hasDrv(dref)) return [];
    else await this.start(dref, name, drvJson);
    return this.syncPaths(dref);
  }

  /**
   * Writes, one after another in the background, the derivations of `list`
   * the index lacks, until `stop()` is called. Failures are left to the
   * build that needs the derivation (its `ensure` retries and reports them).
   */
  writeAhead(list: readonly { dref: DRef; name: string; drvJson: string }[]): { stop(): Promise<void> } {
    const have = this.index.haveDrvs(list.map((d) => d.dref));
    let stopped = false;
    const run = (async () => {
      for (const d of list) {
        if (stopped) return;
        if (have.has(d.dref) || this.placed.has(d.dref)) continue;
        try { await this.start(d.dref, d.name, d.drvJson); } catch { return; }
      }
    })();
    return { stop: () => { stopped = true; return run; } };
  }

  /** Makes durable and indexes the derivations placed but not indexed yet (one fsync round, one transaction). */
  async settle(): Promise<void> {
    const left: { dref: DRef; name: string }[] = [];
    for (const [dref, p] of this.placed) {
      this.placed.delete(dref);
      try { await p.done; } catch { continue; }
      if (!this.index.hasDrv(dref)) left.push({ dref, name: p.name });
    }
    if (left.length === 0) return;
    await fsyncAll([...new Set(left.flatMap((d) => this.syncPaths(d.dref)))]);
    this.index.addDrvs(left);
  }

  private syncPaths(dref: DRef): string[] {
    const dir = this.dir(dref);
    return [path.join(dir, 'drv.json'), dir, path.dirname(dir)];
  }

  private start(dref: DRef, name: string, drvJson: string): Promise<void> {
    const done = this.write(dref, drvJson);
    this.placed.set(dref, { name, done });
    // A failed write is tried again by the next caller.
    done.catch(() => { if (this.placed.get(dref)?.done === done) this.placed.delete(dref); });
    return done;
  }

  private async write(dref: DRef, drvJson: string): Promise<void> {
    const dir = this.dir(dref);
    const staged = path.join(this.root, 'tmp', `${this.owner}-drv-${randomBytes(6).toString('hex')}`);
    await fsp.mkdir(staged);
    await fsp.mkdir(path.join(staged, 'r'));
    await fsp.writeFile(path.join(staged, 'drv.json'), drvJson + '\n', { mode: 0o444 });
    try {
      await fsp.rename(staged, dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      // Written before, by another process or by a run that died before
      // indexing it. A drv.json moved aside by verify --repair is put back
      // (link, unlike rename, never replaces one that is there).
      try {
        await fsp.link(path.join(staged, 'drv.json'), path.join(dir, 'drv.json'));
      } catch (e2) {
        if ((e2 as NodeJS.ErrnoException).code !== 'EEXIST') throw e2;
      }
      await fsp.mkdir(path.join(dir, 'r'), { recursive: true });
      removeTree(staged);
    }
  }
}
