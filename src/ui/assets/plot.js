// One metric across a stage's realizations, as an inline SVG drawn here (no chart library): realizations in
// creation order along x, the metric's value up y, chosen realizations larger and in the accent colour.
import { h } from './vendor/preact.mjs';
import htm from './vendor/htm.mjs';
import { formatNumber, shortHash } from './format.js';

const html = htm.bind(h);

const W = 320;
const H = 150;
const PAD = { left: 56, right: 12, top: 22, bottom: 22 };

export function MetricPlot({ metric, rows, onPick }) {
  const points = rows
    .map((r, i) => ({ i, r, v: r.metrics[metric] }))
    .filter((p) => typeof p.v === 'number' && Number.isFinite(p.v));
  if (points.length === 0) return null;
  let lo = Math.min(...points.map((p) => p.v));
  let hi = Math.max(...points.map((p) => p.v));
  if (lo === hi) {
    lo -= Math.abs(lo) * 0.1 || 1;
    hi += Math.abs(hi) * 0.1 || 1;
  }
  const n = Math.max(rows.length - 1, 1);
  const x = (i) =>
    PAD.left + (rows.length === 1 ? (W - PAD.left - PAD.right) / 2 : (i / n) * (W - PAD.left - PAD.right));
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  const line = points.map((p) => `${x(p.i).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ');
  return html`
    <figure class="plot" data-testid="plot" data-metric=${metric}>
      <svg viewBox=${`0 0 ${W} ${H}`} width=${W} height=${H} role="img" aria-label=${`${metric} by realization`}>
        <text class="plot-title" x=${PAD.left} y="14">${metric}</text>
        <line class="axis" x1=${PAD.left} y1=${H - PAD.bottom} x2=${W - PAD.right} y2=${H - PAD.bottom} />
        <line class="axis" x1=${PAD.left} y1=${PAD.top} x2=${PAD.left} y2=${H - PAD.bottom} />
        <text class="tick" x=${PAD.left - 4} y=${y(hi) + 4} text-anchor="end">${formatNumber(hi)}</text>
        <text class="tick" x=${PAD.left - 4} y=${y(lo) + 4} text-anchor="end">${formatNumber(lo)}</text>
        <text class="tick" x=${W - PAD.right} y=${H - 6} text-anchor="end">realizations, oldest first</text>
        <polyline class="series" points=${line} />
        ${points.map(
          (p) => html`
            <circle
              class=${p.r.chosen ? 'pt chosen' : 'pt'}
              data-testid=${p.r.chosen ? 'plot-chosen' : 'plot-point'}
              cx=${x(p.i)}
              cy=${y(p.v)}
              r=${p.r.chosen ? 6 : 4}
              onClick=${() => onPick(p.r.rref)}
            >
              <title>${`${shortHash(p.r.rref)}: ${formatNumber(p.v)}${p.r.chosen ? ' (chosen)' : ''}`}</title>
            </circle>
          `,
        )}
      </svg>
    </figure>
  `;
}
