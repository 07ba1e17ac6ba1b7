import * as fs from 'node:fs';
import * as path from 'node:path';
import { removeTree, tempName } from './fsutil.js';
import { DIR_MODE, PRIVATE_DIR_MODE } from './permissions.js';

/**
 * Build directories for one-output builds (`tmp/<owner>-build-<random>/`
 * with an empty `out/`; the build log creates its own file). The next one
 * is made on the following turn of the event loop after each `take`, so
 * it is usually made while the main thread waits for the previous build's
 * fsyncs, not between one build's publication and the next build. The
 * two mkdirs are synchronous: a trip to libuv's thread pool costs more
 * than they do (see DrvFiles).
 */
export class BuildDirs {
  private spare: string | undefined;
  private timer: NodeJS.Immediate | undefined;
  private closed = false;

  constructor(
    private readonly tmp: string,
    private readonly owner: string,
  ) {}

  /** A fresh build directory. */
  take(): string {
    if (this.closed) throw new Error('BuildDirs used after close()');
    const dir = this.spare ?? this.make();
    this.spare = undefined;
    this.timer ??= setImmediate(() => {
      this.timer = undefined;
      // A spare that cannot be made now is made (or reported) by the next take.
      if (!this.closed)
        try {
          this.spare = this.make();
        } catch {
          /* see above */
        }
    });
    return dir;
  }

  /** Removes the directory made but not taken. */
  close(): void {
    this.closed = true;
    clearImmediate(this.timer);
    if (this.spare) removeTree(this.spare);
    this.spare = undefined;
  }

  private make(): string {
    const dir = path.join(this.tmp, tempName(this.owner, 'build'));
    fs.mkdirSync(dir, { mode: PRIVATE_DIR_MODE });
    try {
      fs.mkdirSync(path.join(dir, 'out'), { mode: DIR_MODE });
    } catch (e) {
      removeTree(dir);
      throw e;
    }
    return dir;
  }
}
