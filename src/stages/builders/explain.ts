/** `cairn realize --explain`: one line per stage saying where it was built and why (pure). */
import type { PlanEntry } from '../realize.js';
import type { DownBuilder } from './pool.js';

export function explainLine(p: PlanEntry): string {
  if (p.action === 'cached') return `${p.name}: cached (a realization was in the store)`;
  if (p.action === 'substituted') return `${p.name}: substituted (fetched from a binary cache)`;
  const w = p.where;
  if (!w) return `${p.name}: built locally (no builders)`;
  const failed = w.failures.map((f) => `${f.builder} (${f.code})`).join(', ');
  const place = w.builder === 'local' ? 'locally' : `on ${w.builder}`;
  switch (w.why) {
    case 'slot free':
      return `${p.name}: built ${place}: a slot was free`;
    case 'retry':
      return `${p.name}: built ${place}: retried after the failure of ${failed}`;
    case 'fallback':
      return `${p.name}: built locally: fallback after the failure of ${failed}${downPart(w.down)}`;
    case 'local only':
      return `${p.name}: built locally`;
  }
}

/** Which remote builders were down when a build fell back, and for how long. */
function downPart(down: readonly DownBuilder[] | undefined): string {
  if (!down || down.length === 0) return '';
  const each = down.map(
    (d) =>
      `${d.builder} (${d.state === 'dropped' ? 'dropped' : 'backing off'} after ${d.failures} ` +
      `failure${d.failures === 1 ? '' : 's'}, last ${d.code})`,
  );
  return `; down then: ${each.join(', ')}`;
}

export function explainLines(result: { plan: readonly PlanEntry[] }): string[] {
  return result.plan.map(explainLine);
}
