/**
 * The image phase of start/up: every service's image is resolved at once,
 * in parallel, before any container starts (an app's `docker build` no
 * longer waits for the database's ping). Services sharing an image share
 * one job. While jobs run, progress goes to the log: a line per build step
 * (docker build's `Step N/M`, a stage starting or built) and, every few
 * seconds, which images are still building and for how long; on a terminal
 * the latter is one status line rewritten in place instead.
 */

export interface ImageJob<T> {
  /** Services sharing this image (the job runs once for all of them). */
  services: string[];
  /** What is built, for progress lines: `docker build DIR`, `stage NAME`, a tag. */
  what: string;
  run: (step: (line: string) => void) => Promise<T>;
}

export interface Progress {
  /** One line per event (stderr in the CLI). */
  log: (line: string) => void;
  /** A status line that replaces the previous one (a terminal); without it, status goes to `log` every tickMs. */
  status?: (line: string) => void;
  tickMs?: number;
}

const secs = (ms: number): string => `${(ms / 1000).toFixed(0)}s`;

/** Runs the jobs in parallel; resolves to service → its image (or the error that failed it). */
export async function resolveImages<T>(jobs: readonly ImageJob<T>[], p: Progress): Promise<Map<string, T | Error>> {
  const out = new Map<string, T | Error>();
  const t0 = Date.now();
  const pending = new Set<ImageJob<T>>(jobs);
  const label = (j: ImageJob<T>): string => j.services.join(',');
  const tickMs = p.tickMs ?? (p.status ? 1000 : 10_000);
  const tick = setInterval(() => {
    if (pending.size === 0) return;
    const what = [...pending].map((j) => `${label(j)} (${j.what})`).join(', ');
    (p.status ?? p.log)(`images: building ${what}: ${secs(Date.now() - t0)}`);
  }, tickMs);
  tick.unref();
  try {
    await Promise.all(
      jobs.map(async (j) => {
        const started = Date.now();
        let r: T | Error;
        try {
          r = await j.run((line) => p.log(`${label(j)}: ${line}`));
          if (Date.now() - started > 1000) p.log(`${label(j)}: image ready in ${secs(Date.now() - started)}`);
        } catch (e) {
          r = e instanceof Error ? e : new Error(String(e));
        }
        pending.delete(j);
        for (const s of j.services) out.set(s, r);
      }),
    );
  } finally {
    clearInterval(tick);
    p.status?.('');
  }
  return out;
}

/** The `Step N/M : …` lines of classic `docker build` output (whole lines only, across chunks). */
export function buildStepLines(onStep: (line: string) => void): (chunk: string) => void {
  let partial = '';
  return (chunk) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    for (const l of lines) if (/^Step \d+\/\d+ :/.test(l)) onStep(l.trim());
  };
}
