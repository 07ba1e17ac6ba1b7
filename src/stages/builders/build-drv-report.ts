/** What `cairn build-drv --json` prints, checked before it is acted on (it comes from another host). */
import { CairnError, ErrorCodes, type ErrorCode } from '../../errors.js';
import { parseRRef, type DRef, type RRef } from '../../store/refs.js';

export interface BuildDrvReport {
  drv: DRef;
  realizations: RRef[];
  host: string;
  buildMs: number;
}

export function checkBuildDrvReport(x: unknown, dref: DRef, builder: string): BuildDrvReport {
  const bad = (why: string): CairnError =>
    new CairnError('E_BUILDER_FAILED', `${builder}: cairn build-drv printed a bad report: ${why}`, { builder });
  if (typeof x !== 'object' || x === null) throw bad('not an object');
  const r = x as Record<string, unknown>;
  if (r.drv !== dref) throw bad(`it names ${JSON.stringify(r.drv)}, not ${dref}`);
  if (!Array.isArray(r.realizations) || r.realizations.length === 0) throw bad('no realizations');
  const realizations: RRef[] = [];
  for (const v of r.realizations) {
    let rref: RRef;
    try {
      rref = parseRRef(String(v)).rref;
    } catch {
      throw bad(`${JSON.stringify(v)} is not an RRef`);
    }
    if (parseRRef(rref).dref !== dref) throw bad(`${rref} is not a realization of ${dref}`);
    realizations.push(rref);
  }
  const host = typeof r.host === 'string' ? r.host.slice(0, 200) : '?';
  const buildMs = typeof r.buildMs === 'number' && Number.isFinite(r.buildMs) ? r.buildMs : 0;
  return { drv: dref, realizations, host, buildMs };
}

const tail = (s: string): string => s.trim().split('\n').slice(-5).join('\n');

/**
 * A failed remote command (srun, ssh): a Cairn error printed there comes
 * back with its own code (so a failed build is not retried elsewhere);
 * anything else is the builder's failure.
 */
export function remoteError(builder: string, r: { code: number | null; stderr: string }): CairnError {
  const m = /cairn: error (E_[A-Z_]+): (.*)/s.exec(r.stderr);
  if (m && m[1]! in ErrorCodes) return new CairnError(m[1] as ErrorCode, `on ${builder}: ${m[2]!.trim()}`, { builder });
  return new CairnError('E_BUILDER_FAILED', `${builder}: exit ${r.code}: ${tail(r.stderr) || 'no output'}`, {
    builder,
    exit: r.code,
  });
}
