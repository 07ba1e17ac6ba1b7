/** Draws DOT as SVG with Graphviz's own `dot` (a child process): the real layout, not a hand-made one. */
import { spawn } from 'node:child_process';
import { CairnError } from '../../errors.js';

/** The SVG `dot -Tsvg` draws for `dot` source; E_GRAPHVIZ_MISSING without Graphviz, E_GRAPHVIZ_FAILED if it fails. */
export function renderSvg(dotSource: string, opts: { dotPath?: string } = {}): Promise<string> {
  const bin = opts.dotPath ?? 'dot';
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['-Tsvg'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'ENOENT'
          ? new CairnError(
              'E_GRAPHVIZ_MISSING',
              `Graphviz's ${bin} program was not found: install Graphviz (Debian: apt install graphviz), ` +
                'or ask for DOT or Mermaid, which need nothing',
              { program: bin },
            )
          : new CairnError('E_GRAPHVIZ_FAILED', `could not run ${bin}: ${e.message}`, { program: bin }, { cause: e }),
      );
    });
    // dot may exit before reading all its input (a syntax error): the EPIPE is the exit status's business.
    child.stdin.on('error', () => undefined);
    child.on('close', (code, signal) => {
      if (code === 0) return resolve(Buffer.concat(out).toString('utf8'));
      const why = Buffer.concat(err).toString('utf8').trim().slice(0, 2000);
      reject(
        new CairnError('E_GRAPHVIZ_FAILED', `${bin} failed (${signal ?? `exit ${code}`}): ${why}`, {
          program: bin,
          code,
        }),
      );
    });
    child.stdin.end(dotSource);
  });
}
