/**
 * What travels to an ssh builder now (issue 19, what was left): a stage with
 * declared file inputs, and a cairn.yaml pipeline, realized with
 * `--builders ssh://...` on real hosts (two network namespaces with their
 * own sshd, 10.200.32.0/24; host a coordinates, b builds). Every stage but
 * the file imports is built on b, and every RRef equals a local realize.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isolateModuleCache } from './helpers.js';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { ok, rzDir, tmpEntries, type VerifyReport } from './fixtures/torture/support.js';

isolateModuleCache(after, 'cairn-builders-travel-cache');

let h: Hosts;
let a: Host;
let b: Host;

before(async () => {
  h = await startHosts('travel', 2, '10.200.32');
  [a, b] = h.hosts as [Host, Host];
});
after(async () => {
  await h?.stop();
});

interface Result {
  builds: number;
  targets: { rrefs: string[] }[];
  plan: { name: string; action: string; rrefs: string[]; where?: { builder: string; why: string } }[];
  inputs?: { name: string; rrefs: string[] }[];
}

const builder = (host: Host): string => `ssh://root@${host.addr}${host.store}`;

function project(name: string, files: Record<string, string>): string {
  const dir = path.join(h.dir, name);
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), text);
  }
  return dir;
}

async function realizeOn(file: string): Promise<Result> {
  const r = await h.cairn(a, [
    'realize',
    file,
    '--json',
    '--builders',
    builder(b),
    '--builders-ssh',
    h.ssh,
    '--remote-cairn',
    h.remoteCairn,
  ]);
  ok(r, 'realize with an ssh builder');
  return JSON.parse(r.stdout) as Result;
}

/** The same realized locally in a fresh store on host a: the reference RRefs by stage name. */
async function localReference(file: string, label: string): Promise<Map<string, string[]>> {
  const store = path.join(h.dir, `reference-${label}`);
  const res = JSON.parse(
    ok(await h.cairn(a, ['--store', store, 'realize', file, '--json', '-q']), 'local realize').stdout,
  ) as Result;
  return new Map(res.plan.map((p) => [p.name, p.rrefs]));
}

async function assertClean(host: Host): Promise<void> {
  const r = await h.cairn(host, ['store', 'verify', '--json']);
  assert.deepEqual((JSON.parse(r.stdout) as VerifyReport).problems, [], `store verify on ${host.name}`);
  assert.deepEqual(tmpEntries(host.store), []);
}

/** Every planned stage was built on b (file imports are never sent: they copy the coordinator's files). */
async function assertBuiltOnB(res: Result, file: string, label: string): Promise<void> {
  assert.ok(res.plan.length > 0);
  for (const p of res.plan) {
    assert.equal(p.action, 'build', p.name);
    assert.equal(p.where?.builder, builder(b), `${p.name} was built on b: ${JSON.stringify(p.where)}`);
    assert.ok(fs.existsSync(rzDir(a.store, p.rrefs[0]!)), `${p.name} came back to a`);
  }
  const ref = await localReference(file, label);
  for (const p of res.plan) assert.deepEqual(p.rrefs, ref.get(p.name), `${p.name} equals a local realize`);
  await assertClean(a);
}

describe('what travels to an ssh builder', () => {
  it('stages with file inputs (a file, a directory) are built on the builder from the recorded imports', async () => {
    const dir = project('ts-files', {
      'data.csv': 'x\n1\n2\n',
      'conf/k.txt': 'k=v\n',
      'stages.ts': `
import { stage } from 'cairn';
import * as fs from 'node:fs';
import * as path from 'node:path';
export const count = stage({
  name: 'count',
  config: {},
  files: ['data.csv', 'conf/'],
  build: (ctx) => {
    const n = fs.readFileSync(ctx.files['data.csv']!, 'utf8').trim().split('\\n').length;
    const k = fs.readFileSync(path.join(ctx.files['conf/']!, 'k.txt'), 'utf8').trim();
    fs.writeFileSync(ctx.out + '/count.txt', \`\${n} \${k}\\n\`);
  },
});
export default stage({
  name: 'summary',
  config: { count },
  files: ['data.csv'],
  build: (ctx) => {
    const c = fs.readFileSync(ctx.config.count.file('count.txt'), 'utf8');
    fs.writeFileSync(ctx.out + '/summary.txt', c + fs.readFileSync(ctx.files['data.csv']!, 'utf8'));
  },
});
`,
    });
    const file = path.join(dir, 'stages.ts');
    const res = await realizeOn(file);
    assert.deepEqual(res.plan.map((p) => p.name).sort(), ['count', 'summary']);
    assert.equal(res.inputs?.length, 2);
    await assertBuiltOnB(res, file, 'ts-files');
    const out = fs.readFileSync(path.join(rzDir(a.store, res.targets[0]!.rrefs[0]!), 'out', 'summary.txt'), 'utf8');
    assert.equal(out, '3 k=v\nx\n1\n2\n');
  });

  it('a cairn.yaml pipeline is built on the builder (its code object records what loading it read)', async () => {
    const dir = project('yaml', {
      'data.txt': 'a\nb\nc\n',
      'params.yaml': 'train:\n  epochs: 3\n',
      'cairn.yaml': `stages:
  prepare:
    cmd: wc -l < data.txt > count.txt
    deps: [data.txt]
    outs: [count.txt]
  train:
    cmd: echo "epochs \${train.epochs} $(cat count.txt)" > model.txt
    deps: [count.txt]
    params: [train.epochs]
    outs: [model.txt]
`,
    });
    const file = path.join(dir, 'cairn.yaml');
    const res = await realizeOn(file);
    assert.deepEqual(res.plan.map((p) => p.name).sort(), ['prepare', 'train']);
    await assertBuiltOnB(res, file, 'yaml');
    const train = res.plan.find((p) => p.name === 'train')!;
    assert.equal(
      fs.readFileSync(path.join(rzDir(a.store, train.rrefs[0]!), 'out', 'model.txt'), 'utf8'),
      'epochs 3 3\n',
    );
  });
});
