import { CairnError } from '../errors.js';
import { cancelledAtBreak, type PausedBuild } from './break-point.js';
import type { Graph } from './instantiate.js';
import { realize, type RealizeOptions, type RealizeResult } from './realize.js';
import type { Stage } from './stage.js';

/** A realize stopped before one stage's build, whose outputs you write by hand. */
export interface PausedRealize extends PausedBuild {
  /**
   * Stores what was written as the stage's realizations (every promise is
   * checked first: a missing promised file rejects with E_PROMISE_BROKEN
   * and stores nothing) and finishes the realize.
   */
  continue(): Promise<RealizeResult>;
  /** Stores nothing of the stage, removes its directories, and ends the realize. */
  cancel(): Promise<void>;
}

/**
 * Realizes `targets` up to the stage `breakAt` (a name or DRef; its inputs
 * are realized first, and it is built even when realizations exist) and
 * resolves once it waits there. Everything goes through `realize`: the
 * stage's build lock and the run's temporary roots are held while it waits.
 * Rejects with the realize's error if it fails before the break.
 *
 *     const p = await realizePaused(train, { store, breakAt: 'train' });
 *     fs.writeFileSync(path.join(p.out, 'model.txt'), '...');
 *     const result = await p.continue();
 */
export function realizePaused(
  targets: Stage | readonly Stage[] | Graph,
  opts: Omit<RealizeOptions, 'breakAt' | 'dryRun'> & { breakAt: string },
): Promise<PausedRealize> {
  return new Promise((resolvePaused, rejectPaused) => {
    let paused = false;
    let result: Promise<RealizeResult> | undefined;
    const enter = (p: PausedBuild): Promise<void> =>
      new Promise<void>((go, stop) => {
        paused = true;
        let ended: Promise<RealizeResult> | undefined;
        let cancelled: Promise<void> | undefined;
        resolvePaused({
          ...p,
          continue: () => {
            if (cancelled) return Promise.reject(cancelledAtBreak(p, 'it was cancelled before'));
            go();
            return (ended ??= result!);
          },
          cancel: () => {
            if (ended) return Promise.reject(new CairnError('E_BAD_ARGUMENT', 'cancel() after continue()'));
            stop(cancelledAtBreak(p, 'cancel() was called'));
            // The realize ends with that error once the stage's directories are gone: that is the expected end.
            return (cancelled ??= result!.then(
              () => {},
              () => {},
            ));
          },
        });
      });
    result = realize(targets, { ...opts, breakAt: { stage: opts.breakAt, enter } });
    result.then(
      () => {
        if (!paused) rejectPaused(new CairnError('E_NO_SUCH_STAGE', `the realize ended before ${opts.breakAt}`));
      },
      (e: unknown) => {
        // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors
        if (!paused) rejectPaused(e);
      },
    );
  });
}
