/**
 * Built-in machine steps, and how the CLI turns words into step arguments.
 *
 * On the command line a step is `NAME ARG... [--key=value] [--flag]`. Each
 * step says how its positional and named words become its (JSON) args, so
 * the args, and with them the step's identity, are canonical whatever the
 * spelling. Host files a step reads are hashed into its args: editing the
 * file gives a new step identity, restoring it finds the old state again.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import type { Json } from '../store/canonical.js';
import { importModule } from './load.js';
import { requireFileSha256, step, type Step } from './machine.js';
import { stepModuleCode } from './step-module-identity.js';

export interface CliWords {
  positional: string[];
  named: Record<string, string | true>;
}

/** A step the CLI can name, with its words-to-args conversion. */
export interface CliStep<A extends Json = Json> {
  step: Step<A>;
  usage: string;
  fromCli(words: CliWords): A;
}

function noNamed(name: string, w: CliWords): void {
  const extra = Object.keys(w.named);
  if (extra.length)
    throw new CairnError('E_STEP_ARGS', `step ${name} takes no option ${extra.map((k) => `--${k}`).join(', ')}`, {
      step: name,
    });
}

/** Runs a shell command; fails the step when it exits non-zero. Output goes to the step's log. */
export const exec = step<{ cmd: string }>({
  name: 'exec',
  version: 'cairn-exec-1',
  async run(vm, { cmd }) {
    const r = await vm.exec(cmd, { check: true, timeoutMs: 3_600_000 });
    if (r.stdout) vm.log(r.stdout.replace(/\n$/, ''));
    if (r.stderr) vm.log(r.stderr.replace(/\n$/, ''));
  },
});

/**
 * Uploads a host script and runs it with sh; the script's content is part of
 * the identity. As in fingertip, it is transient when it is the last step (a
 * test reruns every time) unless a cache cap is given, and kept when another
 * step follows.
 */
export const scriptRun = step<{ path: string; sha256: string; args: string[] }>({
  name: 'script.run',
  version: 'cairn-script-run-1',
  transient: 'last',
  async run(vm, a) {
    vm.dependOnFile(a.path);
    const inGuest = `/tmp/cairn-script-${a.sha256.slice(0, 12)}`;
    await vm.upload(a.path, inGuest);
    const quoted = a.args.map((x) => `'${x.replace(/'/g, `'\\''`)}'`).join(' ');
    const r = await vm.exec(`sh ${inGuest} ${quoted}`, { check: true, timeoutMs: 3_600_000 });
    if (r.stdout) vm.log(r.stdout.replace(/\n$/, ''));
    if (r.stderr) vm.log(r.stderr.replace(/\n$/, ''));
  },
});

/** Copies a host file into the machine. */
export const upload = step<{ src: string; dst: string; sha256: string }>({
  name: 'upload',
  version: 'cairn-upload-1',
  async run(vm, a) {
    vm.dependOnFile(a.src);
    await vm.upload(a.src, a.dst);
  },
});

/** Writes a greeting into the machine and checks it reads back: a smoke test of the whole chain. */
export const greeting = step<{ name: string }>({
  name: 'self_test.greeting',
  version: 'cairn-greeting-1',
  async run(vm, { name }) {
    const text = `Hello, ${name}!`;
    await vm.exec(`printf '%s\\n' '${text.replace(/'/g, `'\\''`)}' > /greeting`, { check: true });
    const r = await vm.exec('cat /greeting', { check: true });
    if (r.stdout.trim() !== text)
      throw new CairnError('E_MACHINE_EXEC', `self_test.greeting read back ${JSON.stringify(r.stdout)}`);
    vm.log(text);
  },
});

export const BUILTIN_STEPS: ReadonlyMap<string, CliStep<any>> = new Map<string, CliStep<any>>([
  [
    'exec',
    {
      step: exec,
      usage: 'exec CMD...',
      fromCli(w) {
        noNamed('exec', w);
        if (w.positional.length === 0) throw new CairnError('E_STEP_ARGS', 'exec needs a command');
        return { cmd: w.positional.join(' ') };
      },
    },
  ],
  [
    'script.run',
    {
      step: scriptRun,
      usage: 'script.run FILE [ARG...]',
      fromCli(w) {
        noNamed('script.run', w);
        const [file, ...args] = w.positional;
        if (!file) throw new CairnError('E_STEP_ARGS', 'script.run needs a script file');
        const abs = path.resolve(file);
        return { path: abs, sha256: requireFileSha256(abs, 'script.run'), args };
      },
    },
  ],
  [
    'upload',
    {
      step: upload,
      usage: 'upload HOST_FILE MACHINE_PATH',
      fromCli(w) {
        noNamed('upload', w);
        const [src, dst, ...rest] = w.positional;
        if (!src || !dst || rest.length) throw new CairnError('E_STEP_ARGS', 'upload needs HOST_FILE and MACHINE_PATH');
        const abs = path.resolve(src);
        return { src: abs, dst, sha256: requireFileSha256(abs, 'upload') };
      },
    },
  ],
  [
    'self_test.greeting',
    {
      step: greeting,
      usage: 'self_test.greeting [--name=NAME]',
      fromCli(w) {
        const { name, ...rest } = w.named;
        if (w.positional.length || Object.keys(rest).length)
          throw new CairnError('E_STEP_ARGS', 'self_test.greeting takes only --name=NAME');
        return { name: typeof name === 'string' ? name : 'world' };
      },
    },
  ],
]);

const isStep = (x: unknown): x is Step<any> =>
  typeof x === 'object' && x !== null && typeof (x as Step).run === 'function' && typeof (x as Step).code === 'string';

/** Default conversion for user steps: `{ args: [...positional], ...named }` (flags are `true`). */
const defaultFromCli = (w: CliWords): Json => ({ args: w.positional, ...w.named });

/**
 * Finds a step: a built-in name, a module path (contains `/` or ends in
 * .ts/.js), or NAME in a steps directory (DIR/NAME.ts, then DIR/A/B.ts for
 * NAME = A.B). A module's default export (or `step` export) must be a step;
 * it may export `fromCli(words)` to shape its args.
 */
export async function resolveStep(name: string, stepsDirs: readonly string[]): Promise<CliStep<any>> {
  const builtin = BUILTIN_STEPS.get(name);
  if (builtin) return builtin;
  const candidates: string[] = [];
  if (name.includes('/') || /\.[cm]?[jt]s$/.test(name)) candidates.push(path.resolve(name));
  else
    for (const dir of stepsDirs)
      for (const ext of ['.ts', '.js']) {
        candidates.push(path.join(dir, name + ext), path.join(dir, ...name.split('.')) + ext);
      }
  const file = candidates.find((f) => fs.existsSync(f));
  if (!file) {
    throw new CairnError(
      'E_UNKNOWN_STEP',
      `no step ${JSON.stringify(name)}: not built in (${[...BUILTIN_STEPS.keys(), 'shell'].join(', ')})` +
        (stepsDirs.length ? `, nor in ${stepsDirs.join(', ')}` : ''),
      { step: name },
    );
  }
  const mod = await importModule(file);
  const s = [mod.default, mod.step].find(isStep);
  if (!s) throw new CairnError('E_UNKNOWN_STEP', `${file} exports no step (export default step({...}))`, { file });
  const fromCli = typeof mod.fromCli === 'function' ? (mod.fromCli as (w: CliWords) => Json) : defaultFromCli;
  // The module's own code and its local imports are part of the step's identity (see step-module-identity.ts).
  const withModule: Step<any> = Object.freeze({ ...s, code: await stepModuleCode(s, file) });
  return { step: withModule, usage: `${name} ...`, fromCli };
}
