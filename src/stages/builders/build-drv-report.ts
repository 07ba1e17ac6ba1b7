/** What `cairn build-drv --json` prints, checked before it is acted on (it comes from another host). */
import { CairnError } from '../../errors.js';
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
