/**
 * `cairn ui`'s server (issue 20) without a browser: what it refuses (any
 * method but GET, foreign Host headers, paths outside its fixed table of
 * files), the headers it always sends, its JSON API, and that it keeps
 * answering while a realize runs and sees what that realize made.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pointAtPreact } from '../src/ui/assets.js';
import { dotSource, layoutGraph, parseLayout } from '../src/ui/graph-layout.js';
import { allowedHosts, refusal } from '../src/ui/http-guard.js';
import type { UiView } from '../src/ui/view.js';
import { cairn, cairnAsync, expectError, isCode, isolateModuleCache, ok, repoRoot, tempDir } from './helpers.js';
import { rawRequest, startUi, type RunningUi } from './ui-helpers.js';

isolateModuleCache(after, 'cairn-ui-server-cache');

const mlDemo = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');

describe('ui request guard (pure)', () => {
  it('answers GET for the bound names only; a rebinding host name is refused', () => {
    const allowed = allowedHosts('127.0.0.1', 8470);
    assert.equal(refusal('GET', '127.0.0.1:8470', allowed), undefined);
    assert.equal(refusal('GET', 'localhost:8470', allowed), undefined);
    assert.equal(refusal('GET', 'LOCALHOST:8470', allowed), undefined);
    assert.equal(refusal('GET', 'evil.example:8470', allowed)?.status, 421);
    assert.equal(refusal('GET', '127.0.0.1:8471', allowed)?.status, 421);
    assert.equal(refusal('GET', undefined, allowed)?.status, 421);
    for (const m of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD']) {
      assert.equal(refusal(m, '127.0.0.1:8470', allowed)?.status, 405, m);
    }
    const other = allowedHosts('10.200.7.1', 9000);
    assert.deepEqual([...other], ['10.200.7.1:9000'], 'a non-loopback binding answers its own name only');
  });

  it("points preact's bare imports at the served file; E_UI_ASSETS for a build it does not recognise", () => {
    const out = pointAtPreact(Buffer.from('import{options as n}from"preact";import {h} from \'preact\';'), 'x');
    assert.equal(out.toString(), 'import{options as n}from"./preact.mjs";import {h} from "./preact.mjs";');
    assert.throws(() => pointAtPreact(Buffer.from('import "preact-compat";'), 'x'), isCode('E_UI_ASSETS'));
  });

  it('gives dot neutral ids and labels, whatever the stage names and ids', () => {
    const evil = '"];\n evil [label="<script>alert(1)</script>';
    const { text } = dotSource({
      nodes: [
        { id: 'a', kind: 'drv', name: evil },
        { id: 'b"\\', kind: 'rz', name: evil },
      ],
      edges: [{ from: 'a', to: 'b"\\' }],
    });
    const nodeLines = text.split('\n').filter((l) => l.includes('label='));
    assert.equal(nodeLines.length, 2);
    for (const l of nodeLines) assert.match(l, /^ {2}n\d \[shape=\w+ label="[\w .:-]*"\];$/);
    assert.doesNotMatch(text, /evil \[|<|\\/);
  });

  it('reads positions and edges back from the real dot', () => {
    const g = {
      nodes: [
        { id: 'x-dataset', kind: 'drv' as const, name: 'dataset' },
        { id: 'y-train', kind: 'drv' as const, name: 'train' },
      ],
      edges: [{ from: 'x-dataset', to: 'y-train' }],
    };
    const r = layoutGraph(g);
    assert.ok('layout' in r, 'error' in r ? r.error : '');
    const { layout } = r;
    assert.deepEqual(Object.keys(layout.nodes).sort(), ['x-dataset', 'y-train']);
    assert.ok(layout.nodes['x-dataset']!.x < layout.nodes['y-train']!.x, 'left to right');
    assert.equal(layout.edges.length, 1);
    assert.match(layout.edges[0]!.path, /^M[\d.]+,[\d.]+ C/);
    // A column: the derivation on top, its realizations below it in the given order, framed together.
    const col = layoutGraph({
      nodes: [...g.nodes, { id: 'r1', kind: 'rz', name: 'train' }, { id: 'r2', kind: 'rz', name: 'train' }],
      edges: g.edges,
      columns: [['y-train', 'r1', 'r2']],
    });
    assert.ok('layout' in col);
    const [top, r1, r2] = ['y-train', 'r1', 'r2'].map((id) => col.layout.nodes[id]!);
    assert.ok(Math.abs(top!.x - r1!.x) < 1 && Math.abs(r1!.x - r2!.x) < 1, 'one column');
    assert.ok(top!.y < r1!.y && r1!.y < r2!.y, 'top down in order');
    const frame = col.layout.frames['y-train']!;
    assert.ok(frame.y - frame.h / 2 < top!.y - top!.h / 2 && frame.y + frame.h / 2 > r2!.y + r2!.h / 2);
    assert.equal(col.layout.edges.length, 1, 'no edges inside a column');
    const { ids } = dotSource(g);
    assert.throws(() => parseLayout('{"bb":"0,0,x,1"}', g, ids), /not one/);
  });
});

describe('cairn ui server on the ML demo', () => {
  const t = tempDir('cairn-ui-server');
  const store = path.join(t.dir, 'store');
  let ui: RunningUi;
  before(async () => {
    ok(cairn(store, ['realize', mlDemo, '-q']));
    ui = await startUi(store, [mlDemo]);
  });
  after(async () => {
    await ui?.stop();
    t.cleanup();
  });

  it('listens on 127.0.0.1 by default and prints its URL', () => {
    assert.match(ui.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
  });

  it('sends a strict CSP and the other security headers on every answer', async () => {
    for (const p of ['/', '/app.js', '/api/view', '/api/token', '/nope', '/api/rz?ref=x']) {
      const r = await rawRequest(ui.port, p);
      const csp = String(r.headers['content-security-policy']);
      assert.match(csp, /default-src 'none'/, p);
      assert.match(csp, /script-src 'self'(;|$)/, p);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, p);
      assert.equal(r.headers['x-content-type-options'], 'nosniff', p);
      assert.equal(r.headers['x-frame-options'], 'DENY', p);
    }
    const page = await rawRequest(ui.port, '/');
    assert.doesNotMatch(page.body.replace(/<script type="module" src="\/app.js"><\/script>/, ''), /<script/);
  });

  it('refuses every method but GET, and changes nothing', async () => {
    const before = (await rawRequest(ui.port, '/api/token')).body;
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      for (const p of ['/', '/api/view', '/api/rz']) {
        const r = await rawRequest(ui.port, p, { method });
        assert.equal(r.status, 405, `${method} ${p}`);
        assert.equal(r.headers.allow, 'GET');
      }
    }
    assert.equal((await rawRequest(ui.port, '/api/token')).body, before);
  });

  it('refuses Host headers other than its own (DNS rebinding)', async () => {
    for (const host of ['evil.example', `evil.example:${ui.port}`, `127.0.0.1.evil.example:${ui.port}`]) {
      const r = await rawRequest(ui.port, '/api/view', { host });
      assert.equal(r.status, 421, host);
      assert.doesNotMatch(r.body, /train/);
    }
    assert.equal((await rawRequest(ui.port, '/', { host: `localhost:${ui.port}` })).status, 200);
  });

  it('serves its fixed files only: no path reaches the filesystem', async () => {
    const secret = /"name":\s*"cairn"|root:x:0:0/;
    for (const p of [
      '/../package.json',
      '/../../../../etc/passwd',
      '/%2e%2e/%2e%2e/etc/passwd',
      '/vendor/../../package.json',
      '/vendor/..%2f..%2fpackage.json',
      '/app.js/../../../etc/passwd',
      '//etc/passwd',
      '/vendor/preact/package.json',
      '/src/ui/assets/app.js',
      '/index.html',
    ]) {
      const r = await rawRequest(ui.port, p);
      assert.notEqual(r.status, 200, p);
      assert.doesNotMatch(r.body, secret, p);
    }
    // A raw request line with no leading slash, or an absolute URL, is no way around it either.
    const raw = await new Promise<string>((resolve, reject) => {
      const s = net.connect(ui.port, '127.0.0.1', () => {
        s.end(`GET ../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1:${ui.port}\r\nConnection: close\r\n\r\n`);
      });
      let d = '';
      s.on('data', (b) => (d += b.toString()));
      s.on('end', () => resolve(d));
      s.on('error', reject);
    });
    assert.doesNotMatch(raw, /root:x:0:0/);
  });

  it('serves preact and htm from the installed packages, with the bare import rewritten', async () => {
    const hooks = await rawRequest(ui.port, '/vendor/hooks.mjs');
    assert.equal(hooks.status, 200);
    assert.match(String(hooks.headers['content-type']), /javascript/);
    assert.doesNotMatch(hooks.body, /from\s*["']preact["']/);
    assert.match(hooks.body, /from\s*"\.\/preact\.mjs"/);
    assert.equal((await rawRequest(ui.port, '/vendor/preact.mjs')).status, 200);
    assert.equal((await rawRequest(ui.port, '/vendor/htm.mjs')).status, 200);
  });

  it('answers the view: the DAG laid out by dot, the stages and their experiment rows, disk use', async () => {
    const view = JSON.parse((await rawRequest(ui.port, '/api/view')).body) as UiView;
    const drvs = view.graph.nodes.filter((n) => n.kind === 'drv').map((n) => n.name);
    assert.deepEqual(drvs.sort(), ['dataset', 'report', 'train']);
    assert.ok('layout' in view.graph, 'dot laid the graph out');
    assert.deepEqual(
      view.stages.map((s) => s.name),
      ['dataset', 'train', 'report'],
    );
    const train = view.stages.find((s) => s.name === 'train')!;
    assert.equal(train.rows.length, 3);
    assert.equal(train.rows.filter((r) => r.chosen).length, 1);
    assert.ok(train.usage.own.bytes > 0 && train.usage.own.count === 3);
    assert.equal(view.disk.total.count, 5);
  });

  it('answers a realization: files, log, config; a bad ref is a 400, an unknown one a 404', async () => {
    const view = JSON.parse((await rawRequest(ui.port, '/api/view')).body) as UiView;
    const rref = view.stages.find((s) => s.name === 'train')!.rows[0]!.rref;
    const r = await rawRequest(ui.port, `/api/rz?ref=${encodeURIComponent(rref)}`);
    assert.equal(r.status, 200);
    const rz = JSON.parse(r.body) as { files: { path: string }[]; log: string; config: string };
    assert.deepEqual(rz.files.map((f) => f.path).sort(), ['model.json', 'score.txt']);
    assert.match(rz.log, /seed \d+: w=/);
    assert.match(rz.config, /"epochs": 2,/);
    const bad = await rawRequest(ui.port, '/api/rz?ref=..%2F..%2Fetc');
    assert.equal(bad.status, 400);
    assert.equal((JSON.parse(bad.body) as { code: string }).code, 'E_BAD_REF');
    const unknown = rref.replace(/^[0-9a-z]{8}/, '00000000');
    assert.equal((await rawRequest(ui.port, `/api/rz?ref=${unknown}`)).status, 404);
  });

  it('keeps answering while a realize runs (which neither fails nor waits), then shows its results', async () => {
    const token = (JSON.parse((await rawRequest(ui.port, '/api/token')).body) as { token: string }).token;
    let stop = false;
    let answered = 0;
    const hammer = (async () => {
      while (!stop) {
        const r = await rawRequest(ui.port, '/api/view');
        assert.equal(r.status, 200, r.body);
        answered++;
      }
    })();
    const realize = await cairnAsync(store, ['realize', mlDemo, '--force', 'train', '-q']);
    stop = true;
    await hammer;
    ok(realize);
    assert.ok(answered > 0);
    const after = (JSON.parse((await rawRequest(ui.port, '/api/token')).body) as { token: string }).token;
    assert.notEqual(after, token, 'the change token moved');
    const view = JSON.parse((await rawRequest(ui.port, '/api/view')).body) as UiView;
    assert.equal(view.token, after);
    assert.equal(view.stages.find((s) => s.name === 'train')!.rows.length, 6);
  });

  it('warns when asked to listen beyond loopback; E_UI_LISTEN for a port that is taken', async () => {
    const wide = await startUi(store, [mlDemo, '--host', '0.0.0.0']);
    try {
      assert.match(wide.stderr(), /warning: listening on 0\.0\.0\.0/);
      assert.equal((await rawRequest(wide.port, '/')).status, 200);
      assert.equal((await rawRequest(wide.port, '/', { host: `evil.example:${wide.port}` })).status, 421);
    } finally {
      await wide.stop();
    }
    expectError(cairn(store, ['ui', '--port', String(ui.port)]), 'E_UI_LISTEN');
    expectError(cairn(store, ['ui', '--port', '70000']), 'E_USAGE');
  });

  it('takes refs and named roots too; refuses a mix with stage files, and names that are none of them', async () => {
    const view = JSON.parse((await rawRequest(ui.port, '/api/view')).body) as UiView;
    const report = view.stages.find((s) => s.name === 'report')!.rows[0]!.rref;
    ok(cairn(store, ['root', 'add', 'shipped', report]));
    const byRoot = await startUi(store, ['shipped']);
    try {
      const v = JSON.parse((await rawRequest(byRoot.port, '/api/view')).body) as UiView;
      assert.deepEqual(
        v.stages.map((s) => s.name),
        ['dataset', 'train', 'report'],
      );
      assert.equal(v.stages.find((s) => s.name === 'report')!.chosenBy, 'given');
      assert.equal(v.label, 'shipped');
    } finally {
      await byRoot.stop();
    }
    expectError(cairn(store, ['ui', mlDemo, report]), 'E_BAD_ARGUMENT');
    expectError(cairn(store, ['ui', 'no-such-thing']), 'E_STAGE_FILE');
  });

  it('without Graphviz, says so and still lists the stages', async () => {
    const bare = path.join(t.dir, 'no-dot-bin');
    fs.mkdirSync(bare, { recursive: true });
    const noDot = await startUi(store, [mlDemo], { env: { PATH: bare } });
    try {
      const v = JSON.parse((await rawRequest(noDot.port, '/api/view')).body) as UiView;
      assert.ok('error' in v.graph && /Graphviz is not installed/.test(v.graph.error));
      assert.deepEqual(
        v.graph.nodes
          .filter((n) => n.kind === 'drv')
          .map((n) => n.name)
          .sort(),
        ['dataset', 'report', 'train'],
      );
      assert.equal(v.stages.find((s) => s.name === 'train')!.rows.length, 6);
    } finally {
      await noDot.stop();
    }
  });

  it('stops on SIGTERM', async () => {
    const other = await startUi(store, []);
    await other.stop();
    assert.equal(other.child.exitCode, 0);
    await assert.rejects(rawRequest(other.port, '/'), /ECONNREFUSED/);
  });
});
