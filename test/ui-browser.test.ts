/**
 * `cairn ui` in a real browser (issue 20): Debian's Chromium, driven by
 * playwright-core, on the ML demo's store. The DAG has the demo's stages,
 * the training stage's table its three realizations with scores and the
 * matcher's choice marked, a build log opens, and the page updates when a
 * realize finishes. Then hostile content in every place the view shows
 * (stage file name, config keys and values, metric keys, file names,
 * link targets, logs) must show as text and never run.
 *
 * Chromium missing is a failure, not a skip (CI installs it: scripts/system-deps.sh).
 * Screenshots go to the test's temporary directory; with CAIRN_UI_SCREENSHOTS=docs
 * they replace docs/images/ui-dag.png and ui-experiments.png.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { cairn, cairnAsync, isolateModuleCache, lastLine, ok, repoRoot, tempDir } from './helpers.js';
import { startUi, type RunningUi } from './ui-helpers.js';

isolateModuleCache(after, 'cairn-ui-browser-cache');

const CHROMIUM = '/usr/bin/chromium';
const mlDemo = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');
const toDocs = process.env.CAIRN_UI_SCREENSHOTS === 'docs';

async function launch(): Promise<Browser> {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium (scripts/system-deps.sh)`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
}

/** A page that records script errors, failed loads and CSP reports, which every test expects to stay empty. */
async function openPage(browser: Browser, url: string, problems: string[]): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  await page.waitForSelector('[data-testid=exp-table]', { timeout: 30_000 });
  return page;
}

/** Waits until `check` passes (the page polls the server every second). */
async function eventually(check: () => Promise<void>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

describe('cairn ui in Chromium, on the ML demo', () => {
  const t = tempDir('cairn-ui-browser');
  const store = path.join(t.dir, 'store');
  const shots = toDocs ? path.join(repoRoot, 'docs', 'images') : t.dir;
  const problems: string[] = [];
  let report = '';
  let ui: RunningUi;
  let browser: Browser;
  let page: Page;
  before(async () => {
    report = lastLine(ok(cairn(store, ['realize', mlDemo, '-q'])).stdout);
    browser = await launch();
    // Relative, as a user types it (the page's header shows it).
    ui = await startUi(store, [path.relative(repoRoot, mlDemo)]);
    page = await openPage(browser, ui.url, problems);
  });
  after(async () => {
    await browser?.close();
    await ui?.stop();
    t.cleanup();
  });

  it("has the demo's stages in the DAG, laid out by dot, with the chosen realizations marked", async () => {
    const nodes = page.locator('svg[data-testid=dag] [data-testid=dag-node]');
    const names: (string | null)[] = [];
    for (let i = 0; i < (await nodes.count()); i++) names.push(await nodes.nth(i).getAttribute('data-name'));
    assert.deepEqual(names.sort(), ['dataset', 'report', 'train']);
    for (const n of ['dataset', 'train', 'report']) {
      assert.equal(await page.locator(`[data-testid=dag-node][data-name=${n}] text`).textContent(), n);
    }
    assert.equal(await page.locator('[data-testid=dag-rz]').count(), 5, 'every realization of the current inputs');
    assert.equal(await page.locator('[data-testid=dag-rz].chosen').count(), 3, 'one chosen per stage');
    const frames = page.locator('svg[data-testid=dag] rect.frame');
    assert.equal(await frames.count(), 3, "a frame around each stage's column");
    assert.ok((await page.locator('svg[data-testid=dag] path.edge').count()) >= 3);
  });

  it('shows three training realizations with their scores, the chosen one (the best) marked', async () => {
    await page.locator('[data-testid=stage-tab][data-name=train]').click();
    const rows = page.locator('[data-testid=stage][data-name=train] [data-testid=exp-row]');
    assert.equal(await rows.count(), 3);
    const scores = (await rows.locator('[data-testid=metric][data-key=score]').allTextContents()).map(Number);
    assert.equal(scores.length, 3);
    for (const s of scores) assert.ok(Number.isFinite(s) && s < 0, `score ${s}`);
    assert.equal(new Set(scores).size, 3, 'the three seeds score differently: the plot is not flat');
    const chosen = rows.locator('xpath=self::*[@data-chosen="yes"]');
    assert.equal(await chosen.count(), 1);
    assert.equal(await chosen.locator('[data-testid=chosen-mark]').textContent(), '★');
    const chosenScore = Number(await chosen.locator('[data-testid=metric][data-key=score]').textContent());
    assert.equal(chosenScore, Math.max(...scores));
    // The chosen one is the model the report was built from.
    const rref = (await chosen.getAttribute('data-rref'))!;
    assert.match(ok(cairn(store, ['catref', report, 'report.md'])).stdout, new RegExp(`Model realization: ${rref}`));
    assert.match((await page.locator('[data-testid=chosen-by]').textContent())!, /chosen by best\(1, score\.txt\)/);
    // The plot of the score: three points, the chosen one highlighted.
    const plot = page.locator('[data-testid=plot][data-metric=score]');
    assert.equal(await plot.locator('[data-testid=plot-chosen]').count(), 1);
    assert.equal(await plot.locator('[data-testid=plot-point]').count(), 2);
  });

  it("opens a realization's build log, files and config", async () => {
    const chosen = page.locator('[data-testid=exp-row][data-chosen=yes]');
    await chosen.locator('[data-testid=open-rz]').click();
    const detail = page.locator('[data-testid=rz-detail]');
    await detail.waitFor();
    assert.equal(await detail.getAttribute('data-rref'), await chosen.getAttribute('data-rref'));
    const log = page.locator('[data-testid=log]');
    assert.match((await log.textContent())!, /building \S+-train with 3 output\(s\)[\s\S]*seed \d+: w=/);
    const files = await page.locator('[data-testid=file] .path').allTextContents();
    assert.deepEqual(files.sort(), ['model.json', 'score.txt']);
    assert.match((await page.locator('[data-testid=config]').textContent())!, /"learningRate": 0\.002/);
    assert.ok((await page.locator('[data-testid=disk-row]').count()) === 3);
  });

  it('updates when a realize finishes, which it does not disturb', async () => {
    const r = await cairnAsync(store, ['realize', mlDemo, '--force', 'train', '-q']);
    ok(r);
    await eventually(async () => {
      assert.equal(await page.locator('[data-testid=stage][data-name=train] [data-testid=exp-row]').count(), 6);
    });
    assert.equal(await page.locator('[data-testid=exp-row][data-chosen=yes]').count(), 1);
    assert.equal(await page.locator('[data-testid=plot][data-metric=score] circle').count(), 6);
    await page.locator('[data-testid=dag]').screenshot({ path: path.join(shots, 'ui-dag.png') });
    // Tall enough for the score plot below the table.
    await page.setViewportSize({ width: 1200, height: 1150 });
    await page.screenshot({ path: path.join(shots, 'ui-experiments.png') });
    await page.screenshot({ path: path.join(t.dir, 'ui-full.png'), fullPage: true });
    assert.ok(fs.statSync(path.join(shots, 'ui-experiments.png')).size > 10_000);
  });

  it('ran without a script error, a failed load or a CSP violation', () => {
    assert.deepEqual(problems, []);
  });
});

const IMG = '<img src=x onerror="window.__pwned=1">';
const SCRIPT = '<script>window.__pwned=2</script>';

/** A stage file that puts markup everywhere the view shows text from the store or the file. */
const HOSTILE_STAGES = `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';

const IMG = ${JSON.stringify(IMG)};
const SCRIPT = ${JSON.stringify(SCRIPT)};

const make = (n: number) =>
  stage({
    name: 'evil',
    config: { note: IMG + SCRIPT + n, [IMG]: n },
    outputs: ['metrics.json'],
    build: ({ config, out, log }) => {
      log(IMG + SCRIPT);
      fs.writeFileSync(path.join(out, 'metrics.json'), JSON.stringify({ [IMG]: config.note.length, [SCRIPT]: 1 }));
      fs.writeFileSync(path.join(out, IMG + '.txt'), SCRIPT);
      fs.writeFileSync(Buffer.concat([Buffer.from(out + '/<b'), Buffer.from([0xff]), Buffer.from('>')]), '');
      fs.symlinkSync(IMG, path.join(out, 'link'));
    },
  });

export const one = make(1);
export const two = make(2);
export default stage({ name: 'top', config: { a: one, b: two }, build: () => undefined });
`;

describe('cairn ui shows hostile content as text and never runs it', () => {
  const t = tempDir('cairn-ui-hostile');
  const store = path.join(t.dir, 'store');
  const file = path.join(t.dir, `${IMG}.ts`);
  const problems: string[] = [];
  let ui: RunningUi;
  let browser: Browser;
  let page: Page;
  before(async () => {
    fs.writeFileSync(file, HOSTILE_STAGES);
    ok(cairn(store, ['realize', file, '-q'], { cwd: t.dir }));
    browser = await launch();
    ui = await startUi(store, [path.basename(file)], { cwd: t.dir });
    page = await openPage(browser, ui.url, problems);
    await page.locator('[data-testid=stage-tab][data-name=evil]').click();
    await page.locator('[data-testid=exp-row] [data-testid=open-rz]').first().click();
    await page.locator('[data-testid=log]').waitFor();
  });
  after(async () => {
    await browser?.close();
    await ui?.stop();
    t.cleanup();
  });

  it('shows the markup literally: file label, params, metric keys, file names, link targets, config, log', async () => {
    const text = (await page.locator('#app').textContent())!;
    assert.ok(text.includes(`${IMG}.ts`), 'the stage file name in the header');
    // Keys that are not plain words are shown quoted (flatten.ts), so `a.b` and {"a.b": …} never collide.
    const metricKeys = await page.locator('[data-testid=exp-table] th.metric').allTextContents();
    assert.deepEqual(metricKeys.sort(), [JSON.stringify(IMG), JSON.stringify(SCRIPT)].sort());
    const paramKeys = await page.locator('[data-testid=exp-table] th.param').allTextContents();
    assert.deepEqual(paramKeys.sort(), [JSON.stringify(IMG), 'note'].sort());
    const params = await page.locator('[data-testid=param]').allTextContents();
    assert.ok(
      params.some((p) => p.includes(IMG + SCRIPT)),
      `param values: ${params.join(' | ')}`,
    );
    const files = await page.locator('[data-testid=file] .path').allTextContents();
    assert.ok(files.includes(`${IMG}.txt`), `files: ${files.join(' | ')}`);
    assert.ok(files.includes(IMG), 'the link target');
    assert.ok(
      files.some((f) => f.includes('\\xff')),
      'a name that is not UTF-8, escaped',
    );
    assert.ok((await page.locator('[data-testid=log]').textContent())!.includes(IMG + SCRIPT));
    assert.ok((await page.locator('[data-testid=config]').textContent())!.includes(JSON.stringify(IMG)));
  });

  it('runs none of it: no injected element, no handler ran, no flag set', async () => {
    assert.equal(await page.evaluate(() => (globalThis as { __pwned?: unknown }).__pwned), undefined);
    assert.equal(await page.locator('#app img').count(), 0);
    assert.equal(await page.locator('#app script').count(), 0);
    assert.equal(await page.locator('script').count(), 1, "only the page's own module");
    // Hover and click where the markup shows: a live element would fire here.
    await page.locator('[data-testid=dag-node][data-name=evil]').first().click();
    await page.locator('[data-testid=plot] circle').first().click();
    await page.locator('[data-testid=log]').waitFor();
    assert.equal(await page.evaluate(() => (globalThis as { __pwned?: unknown }).__pwned), undefined);
    assert.deepEqual(problems, []);
  });

  it('has a CSP that stops inline code even if markup got into the page', async () => {
    const before = problems.length;
    await page.evaluate(`(() => {
      const d = document.createElement('div');
      d.innerHTML = ${JSON.stringify(IMG + '<script>window.__pwned=3</script>')};
      document.body.append(d);
      const s = document.createElement('script');
      s.textContent = 'window.__pwned = 4';
      document.body.append(s);
    })()`);
    await eventually(async () => {
      assert.ok(
        problems.slice(before).some((p) => /Content Security Policy/.test(p)),
        problems.join('\n'),
      );
    });
    assert.equal(await page.evaluate(() => (globalThis as { __pwned?: unknown }).__pwned), undefined);
  });
});
