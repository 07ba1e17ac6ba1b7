import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncAll, removeTree, tempName } from './fsutil.js';
import { DIR_MODE, makeDirs } from './permissions.js';
import { CODE_POINTER, writeCodePointer } from './code-files.js';
import type { StoreIndex } from './index-db.js';
import type { DRef } from './refs.js';

/**
 * Writes `d/<dref>/{drv.json,r/}`. A realize writes the derivations it is
 * about to build ahead of the builds (`writeAhead`, as nix-instantiate
 * writes .drv files before nix-store builds them) instead of between a
 * build and its publication.
 *
 * The writes are synchronous and done one per turn of the event loop, so
 * they fill the time the main thread spends waiting for a build's fsyncs.
 * They are not sent to libuv's thread pool: four syscalls take about
 * 150 µs inline, while every trip to the pool costs two thread wake-ups
 * and waits behind the fsyncs of the build in progress, which is the
 * critical path of a chain.
 *
 * A derivation directory is staged in `tmp/` and renamed into place whole,
 * so a kill leaves all of it or none. Its files are made durable by the
 * fsync round of its first realization (`ensure` returns the paths), and
 * its entry in `d/` by `Store.record`, which indexes it with that
 * realization: the index names only durable derivations. Those written
 * ahead whose build never came are fsynced and indexed by `settle`, so gc
 * can collect them.
 */
export class DrvFiles {
  /** Derivations this process placed, DRef → name, until `settle` indexes those no realization did. */
  private readonly placed = new Map<DRef, string>();
  /** Those of them placed with a code pointer (code-files.ts), made durable with them. */
  private readonly withPointer = new Set<DRef>();

  constructor(
    private readonly root: string,
    private readonly owner: string,
    private readonly index: StoreIndex,
  ) {}

  dir(dref: DRef): string {
    return path.join(this.root, 'd', dref);
  }

  /** `d/`: its fsync makes placed derivation directories durable. */
  get parent(): string {
    return path.join(this.root, 'd');
  }

  /**
   * Makes sure the derivation is on disk; returns the paths to fsync before
   * a realization of it is renamed into place (none once it is indexed).
   */
  ensure(dref: DRef, name: string, drvJson: string, code?: string): string[] {
    if (!this.placed.has(dref)) {
      if (this.index.hasDrv(dref)) {
        if (code !== undefined) writeCodePointer(this.dir(dref), code, false);
        return [];
      }
      this.place(dref, name, drvJson, code);
    } else if (code !== undefined) writeCodePointer(this.dir(dref), code, false);
    return this.syncPaths(dref);
  }

  /**
   * Writes the derivations of `list` that the index lacks, one per turn
   * of the event loop, until `stop()` is called. Failures are left to the
   * build that needs the derivation (its `ensure` tries again and reports
   * them).
   */
  writeAhead(list: readonly { dref: DRef; name: string; drvJson: string }[]): { stop(): void } {
    const have = this.index.haveDrvs(list.map((d) => d.dref));
    let next = 0;
    let timer: NodeJS.Immediate | undefined;
    const step = (): void => {
      while (next < list.length) {
        const d = list[next++]!;
        if (have.has(d.dref) || this.placed.has(d.dref)) continue;
        try {
          this.place(d.dref, d.name, d.drvJson);
        } catch {
          return;
        }
        timer = setImmediate(step);
        return;
      }
    };
    timer = setImmediate(step);
    return { stop: () => clearImmediate(timer) };
  }

  /** Makes durable and indexes the derivations placed but not indexed yet (one fsync round, one transaction). */
  async settle(): Promise<void> {
    const left: { dref: DRef; name: string }[] = [];
    for (const [dref, name] of this.placed) {
      this.placed.delete(dref);
      if (!this.index.hasDrv(dref)) left.push({ dref, name });
    }
    const paths = left.flatMap((d) => this.syncPaths(d.dref));
    this.withPointer.clear();
    if (left.length === 0) return;
    await fsyncAll([...paths, this.parent]);
    this.index.addDrvs(left);
  }

  private syncPaths(dref: DRef): string[] {
    const dir = this.dir(dref);
    const paths = [path.join(dir, 'drv.json'), dir];
    if (this.withPointer.has(dref)) paths.push(path.join(dir, CODE_POINTER));
    return paths;
  }

  private place(dref: DRef, name: string, drvJson: string, codeObject?: string): void {
    const dir = this.dir(dref);
    const staged = path.join(this.root, 'tmp', tempName(this.owner, 'drv'));
    fs.mkdirSync(staged, { mode: DIR_MODE });
    try {
      fs.mkdirSync(path.join(staged, 'r'), { mode: DIR_MODE });
      fs.writeFileSync(path.join(staged, 'drv.json'), drvJson + '\n', { mode: 0o444 });
      // The code pointer (code-files.ts) comes in the same rename: no file of its own to replace atomically.
      if (codeObject !== undefined)
        fs.writeFileSync(path.join(staged, CODE_POINTER), `${codeObject}\n`, { mode: 0o444 });
      fs.renameSync(staged, dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      try {
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
        // Written before, by another process or by a run that died before
        // indexing it. A drv.json moved aside by verify --repair is put back
        // (link, unlike rename, never replaces one that is there).
        try {
          fs.linkSync(path.join(staged, 'drv.json'), path.join(dir, 'drv.json'));
        } catch (e2) {
          if ((e2 as NodeJS.ErrnoException).code !== 'EEXIST') throw e2;
        }
        makeDirs(path.join(dir, 'r'));
        if (codeObject !== undefined) writeCodePointer(dir, codeObject, false);
      } finally {
        removeTree(staged);
      }
    }
    this.placed.set(dref, name);
    if (codeObject !== undefined) this.withPointer.add(dref);
  }
}
