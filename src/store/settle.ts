/**
 * `f()` as a promise, a synchronous throw turned into a rejection: callers
 * of the Store interface handle rejections only, and a local store answers
 * most calls synchronously.
 */
export function settle<T>(f: () => T | Promise<T>): Promise<T> {
  try {
    return Promise.resolve(f());
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}
