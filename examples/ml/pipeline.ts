/**
 * A small, non-deterministic, ML-style pipeline:
 *
 *   dataset ──> train (3 random seeds per build, best score wins) ──> report
 *                 └──────────────────────────────────────────────────^
 *
 * Realize it with `cairn realize examples/ml/pipeline.ts`. A second run is
 * fully cached: every stage's matcher is satisfied by what is in the store.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { best, stage } from 'cairn';

/** A tiny seeded PRNG (mulberry32), so the dataset is the same on every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const dataset = stage({
  name: 'dataset',
  config: { samples: 400, slope: 3, intercept: 2, noise: 0.5, seed: 42 },
  outputs: ['train.json', 'test.json'],
  build: ({ config, out, log }) => {
    const rand = rng(config.seed);
    const point = () => {
      const x = rand() * 10 - 5;
      return [x, config.slope * x + config.intercept + (rand() - 0.5) * 2 * config.noise];
    };
    const all = Array.from({ length: config.samples }, point);
    const cut = Math.floor(all.length * 0.8);
    fs.writeFileSync(path.join(out, 'train.json'), JSON.stringify(all.slice(0, cut)));
    fs.writeFileSync(path.join(out, 'test.json'), JSON.stringify(all.slice(cut)));
    log(`wrote ${cut} training and ${all.length - cut} test points`);
  },
});

export const train = stage({
  name: 'train',
  // Two short epochs: the fit stops before it converges, so where each model
  // starts (its random seed) shows in its test error, and best() has a real
  // choice to make. (Trained to convergence, all three would score the same.)
  config: { data: dataset, epochs: 2, learningRate: 0.002 },
  // Each build trains three models from random initial weights; each
  // becomes a realization, and the matcher keeps the one that scored best.
  n: 3,
  outputs: ['model.json', 'score.txt'],
  matcher: best({ file: 'score.txt' }),
  build: ({ config, outs, log }) => {
    const load = (f: string) => JSON.parse(fs.readFileSync(config.data.file(f), 'utf8')) as [number, number][];
    const trainSet = load('train.json');
    const testSet = load('test.json');
    for (const out of outs) {
      const seed = Math.floor(Math.random() * 2 ** 31);
      const rand = rng(seed);
      let w = rand() * 20 - 10;
      let b = rand() * 20 - 10;
      for (let epoch = 0; epoch < config.epochs; epoch++) {
        for (const [x, y] of trainSet) {
          const err = w * x + b - y;
          w -= config.learningRate * err * x;
          b -= config.learningRate * err;
        }
      }
      const mse = testSet.reduce((s, [x, y]) => s + (w * x + b - y) ** 2, 0) / testSet.length;
      fs.writeFileSync(path.join(out, 'model.json'), JSON.stringify({ w, b, seed }));
      // Higher is better for best(): the negated test error.
      fs.writeFileSync(path.join(out, 'score.txt'), String(-mse));
      log(`seed ${seed}: w=${w.toFixed(4)} b=${b.toFixed(4)} test mse=${mse.toFixed(5)}`);
    }
  },
});

export const report = stage({
  name: 'report',
  config: { model: train, data: dataset, title: 'Linear fit' },
  outputs: ['report.md'],
  build: ({ config, out }) => {
    const model = JSON.parse(fs.readFileSync(config.model.file('model.json'), 'utf8')) as {
      w: number;
      b: number;
      seed: number;
    };
    const score = Number(fs.readFileSync(config.model.file('score.txt'), 'utf8'));
    const text = [
      `# ${config.title}`,
      '',
      `Best of the trained models (seed ${model.seed}):`,
      '',
      `    y = ${model.w.toFixed(4)} x + ${model.b.toFixed(4)}`,
      '',
      `Test MSE: ${(-score).toFixed(5)}`,
      `Model realization: ${config.model.rrefs[0]}`,
      `Dataset realization: ${config.data.rrefs[0]}`,
      '',
    ].join('\n');
    fs.writeFileSync(path.join(out, 'report.md'), text);
  },
});

export default report;
