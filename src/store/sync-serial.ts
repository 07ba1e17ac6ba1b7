/**
 * One sync per staging key at a time within this process. A sync's staging
 * directory is named by (direction, source, target, roots) so that a re-run
 * resumes it; two syncs of the same closure at once would share it, and the
 * first receive removes it under the second (`E_SYNC_FAILED`: "no staging
 * directory"). A realize with builders does exactly that: every part of a
 * fan-out that depends on one upstream stage pushes the same closure to the
 * same host. Queued here, the second push finds everything present and sends
 * nothing. Two pulls raced the same way (one receive emptied the directory
 * under the other's rsync: ENOTEMPTY). Syncs of different closures still
 * run side by side.
 */
const running = new Map<string, Promise<void>>();

/** Runs `fn` once every earlier call with the same key has settled. */
export async function oneSyncPerKey<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const before = running.get(key) ?? Promise.resolve();
  const mine = before.then(fn);
  const settled = mine.then(
    () => {},
    () => {},
  );
  running.set(key, settled);
  try {
    return await mine;
  } finally {
    if (running.get(key) === settled) running.delete(key);
  }
}
