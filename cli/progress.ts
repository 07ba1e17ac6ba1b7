import type { CairnError } from '../src/errors.js';
import type { Derivation, RealizeEvents } from '../src/index.js';

const secs = (ms: number): string => `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)}s`;

/**
 * Progress on stderr. On a terminal one status line is redrawn in place
 * (at most every 50 ms, so 10,000 cached stages do not flood it); otherwise
 * only builds, waits and failures are printed, one plain line each.
 */
export function progressReporter(
  total: number,
  opts: { tty: boolean; verbose: boolean; quiet: boolean },
): RealizeEvents & { finish(): void; say(text: string): void; hold(on: boolean): void } {
  const err = process.stderr;
  const running = new Set<string>();
  let cached = 0;
  let built = 0;
  let substituted = 0;
  /** Where builds that went to a remote builder ran (placed comes just before built). */
  const remoteOf = new Map<string, string>();
  let drawnAt = 0;
  let drawn = false;
  const line = (text: string): void => {
    if (opts.quiet) return;
    if (opts.tty && drawn) err.write('\r\x1b[2K');
    err.write(text + '\n');
    drawn = false;
    status(true);
  };
  // While a --break shell owns the terminal, the status line is not drawn.
  let held = false;
  const status = (force = false): void => {
    if (!opts.tty || opts.quiet || held) return;
    const now = Date.now();
    if (!force && now - drawnAt < 50) return;
    drawnAt = now;
    const names = [...running].slice(0, 3).join(', ') + (running.size > 3 ? ', …' : '');
    const subst = substituted > 0 ? `, ${substituted} substituted` : '';
    const building = running.size ? ` | building ${names}` : '';
    const text = `[${cached + built + substituted}/${total}] ${built} built${subst}, ${cached} cached${building}`;
    err.write(`\r\x1b[2K${text.slice(0, (err.columns || 100) - 1)}`);
    drawn = true;
  };
  return {
    cached: () => {
      cached++;
      status();
    },
    start: (n: Derivation, why) => {
      running.add(n.name);
      // On a terminal the status line already names what is building.
      if (opts.tty) status(true);
      else if (n.imports) line(`importing file input ${n.imports.key} ${n.dref}`);
      else line(`building ${n.name} ${n.dref}${why === 'forced' ? ' (forced)' : ''}`);
    },
    wait: (n: Derivation, holder: string) =>
      line(`waiting for ${n.name}: process ${holder.split('.')[0]} is building it`),
    built: (n: Derivation, rrefs, ms, fresh) => {
      running.delete(n.name);
      built++;
      // What was just built; the matcher (best(), say) may still prefer an older realization.
      const made = fresh ?? rrefs;
      const same = made.length === rrefs.length && made.every((r, i) => r === rrefs[i]);
      const chose = same ? '' : `; ${n.stage.matcher.name} chose ${rrefs.join(' ')}`;
      if (n.imports) line(`imported ${n.imports.key} in ${secs(ms)}: ${rrefs.join(' ')}`);
      else {
        const on = remoteOf.has(n.dref) ? ` on ${remoteOf.get(n.dref)}` : '';
        line(`built ${n.name}${on} in ${secs(ms)}: ${made.join(' ')}${chose}`);
      }
    },
    placed: (n: Derivation, placement) => {
      if (placement.builder !== 'local') remoteOf.set(n.dref, placement.builder);
    },
    log: (n: Derivation, text: string, output?: number) => {
      if (opts.verbose) line(`${n.name}${output === undefined ? '' : `[${output}]`}> ${text}`);
    },
    substituted: (n: Derivation, rrefs, from) => {
      substituted++;
      if (opts.tty) status(true);
      else line(`substituted ${n.name} from ${from.join(', ')}: ${rrefs.join(' ')}`);
    },
    // Printed even with --quiet: cache trouble is worth one line.
    warning: (text: string) => {
      if (opts.tty && drawn) err.write('\r\x1b[2K');
      err.write(text + '\n');
      drawn = false;
      status(true);
    },
    failed: (n: Derivation, e: CairnError) => {
      running.delete(n.name);
      line(`failed ${n.name}: ${e.code}`);
    },
    // Lines for a person (a --break hint), printed even with --quiet, with the status line cleared first.
    say: (text: string) => {
      if (opts.tty && drawn) err.write('\r\x1b[2K');
      err.write(text + '\n');
      drawn = false;
    },
    hold: (on: boolean) => {
      held = on;
      if (!on) status(true);
    },
    finish: () => {
      if (opts.tty && drawn) err.write('\r\x1b[2K');
      drawn = false;
    },
  };
}
