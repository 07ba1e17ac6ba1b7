import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { removeTree } from './fsutil.js';

/**
 * Build directories for one-output builds (`tmp/<owner>-build-<random>/`
 * with an empty `out/` and `build.log`), made in libuv's thread pool ahead
 * of need: while one build waits for its fsyncs, the directory of the next
 * one is being created, instead of three file creations standing between
 * one build's publication and the next build.
 */
export class BuildDirs {
  private spare: Promise<string>[] = [];
  private closed = false;

  constructor(private readonly tmp: string, private readonly owner: string, private readonly ahead: number) {}

  /** A fresh build directory; starts making the next ones. */
  take(): Promise<string> {
    if (this.closed) throw new Error('BuildDirs used after close()');
    const dir = this.spare.shift() ?? this.make();
    while (this.spare.length < this.ahead) this.spare.push(this.make());
    return dir;
  }

  /** Removes the directories made but not taken. */
  async close(): Promise<void> {
    this.closed = true;
    const left = this.spare;
    this.spare = [];
    for (const d of await Promise.allSettled(left)) if (d.status === 'fulfilled') removeTree(d.value);
  }

  private make(): Promise<string> {
    const dir = path.join(this.tmp, `${this.owner}-build-${randomBytes(6).toString('hex')}`);
    const made = (async () => {
      await fsp.mkdir(dir, { mode: 0o700 });
      try {
        await fsp.mkdir(path.join(dir, 'out'));
        await fsp.writeFile(path.join(dir, 'build.log'), '', { mode: 0o644 });
      } catch (e) {
        removeTree(dir);
        throw e;
      }
      return dir;
    })();
    // A spare nobody takes must not fail the process; a taken one reports its error.
    made.catch(() => {});
    return made;
  }
}
