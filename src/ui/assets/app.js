/* global document, fetch, setInterval, clearInterval */
// The Cairn web view. Everything the store holds (stage names, file names, logs, configs, metric keys) is
// rendered as text by preact, never as markup; the server's CSP forbids inline scripts besides.
import { h, render } from './vendor/preact.mjs';
import { useEffect, useState } from './vendor/hooks.mjs';
import htm from './vendor/htm.mjs';
import { formatAge, formatBytes, formatDuration, formatNumber, shortHash } from './format.js';
import { MetricPlot } from './plot.js';

const html = htm.bind(h);
const POLL_MS = 1000;
/** What the server sends of a long log (view.ts, LOG_TAIL_BYTES). */
const LOG_TAIL = 512 * 1024;

async function getJson(url) {
  const res = await fetch(url, { cache: 'no-store' });
  const body = await res.json();
  if (!res.ok) throw new Error(`${body.code ?? res.status}: ${body.message ?? ''}`);
  return body;
}

/** The stage shown first: the one with the most realizations (the interesting one in an experiment). */
function defaultStage(view) {
  let best;
  for (const s of view.stages) if (!best || s.rows.length > best.rows.length) best = s;
  return best?.dref;
}

function Dag({ graph, stages, selected, onStage, onRz }) {
  if (graph.error !== undefined || !graph.layout) {
    return html`<div class="warning" data-testid="dag-error">No graph layout: ${graph.error}</div>
      <ul class="dag-list" data-testid="dag">
        ${graph.nodes
          .filter((n) => n.kind === 'drv')
          .map(
            (n) =>
              html`<li data-testid="dag-node" data-name=${n.name}>
                <button onClick=${() => onStage(n.id)}>${n.name}</button>
              </li>`,
          )}
      </ul>`;
  }
  const { layout } = graph;
  const count = new Map(stages.map((s) => [s.dref, s.rows.length]));
  return html` <svg
    class="dag"
    data-testid="dag"
    viewBox=${`-4 -4 ${layout.width + 8} ${layout.height + 8}`}
    width=${layout.width + 8}
    height=${layout.height + 8}
  >
    <defs>
      <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">
        <path d="M0,0 L10,5 L0,10 z" class="arrowhead" />
      </marker>
    </defs>
    ${Object.entries(layout.frames).map(
      ([id, f]) =>
        html`<rect
          class="frame"
          data-of=${id}
          x=${f.x - f.w / 2}
          y=${f.y - f.h / 2}
          width=${f.w}
          height=${f.h}
          rx="6"
        />`,
    )}
    ${layout.edges.map((e) => html`<path class="edge" d=${e.path} marker-end="url(#arrow)" />`)}
    ${graph.nodes.map((n) => {
      const b = layout.nodes[n.id];
      if (!b) return null;
      if (n.kind === 'drv') {
        const cls = `node drv${n.id === selected ? ' selected' : ''}`;
        return html` <g
          class=${cls}
          data-testid="dag-node"
          data-name=${n.name}
          data-dref=${n.id}
          onClick=${() => onStage(n.id)}
        >
          <title>${`${n.id}\n${count.get(n.id) ?? 0} realization(s)`}</title>
          <rect x=${b.x - b.w / 2} y=${b.y - b.h / 2} width=${b.w} height=${b.h} rx="4" />
          <text x=${b.x} y=${b.y + 4} text-anchor="middle">${n.name}</text>
        </g>`;
      }
      return html` <g
        class=${`node rz${n.chosen ? ' chosen' : ''}`}
        data-testid="dag-rz"
        data-rref=${n.id}
        onClick=${() => onRz(n.id)}
      >
        <title>${`${n.id}${n.chosen ? ' (chosen)' : ''}`}</title>
        <ellipse cx=${b.x} cy=${b.y} rx=${b.w / 2} ry=${b.h / 2} />
        <text x=${b.x} y=${b.y + 4} text-anchor="middle">${shortHash(n.id)}</text>
      </g>`;
    })}
  </svg>`;
}

function ExperimentTable({ stage, now, openRz, selectedRz }) {
  const cols = [...stage.paramKeys.map((k) => ['param', k]), ...stage.metricKeys.map((k) => ['metric', k])];
  return html` <table class="exp" data-testid="exp-table" data-stage=${stage.name}>
    <thead>
      <tr>
        <th title="chosen by the matcher">chosen</th>
        <th>realization</th>
        ${cols.map(([kind, k]) => html`<th class=${kind}>${k}</th>`)}
        <th>age</th>
        <th>build time</th>
      </tr>
    </thead>
    <tbody>
      ${stage.rows.map(
        (r) =>
          html` <tr
            data-testid="exp-row"
            data-rref=${r.rref}
            data-chosen=${r.chosen ? 'yes' : 'no'}
            class=${`${r.chosen ? 'chosen' : ''}${r.rref === selectedRz ? ' selected' : ''}`}
          >
            <td class="mark" data-testid="chosen-mark">${r.chosen ? '★' : ''}</td>
            <td>
              <button class="link" data-testid="open-rz" onClick=${() => openRz(r.rref)}>${shortHash(r.rref)}</button>
            </td>
            ${cols.map(([kind, k]) => {
              const v = kind === 'param' ? r.params[k] : r.metrics[k];
              return html`<td class=${kind} data-testid=${kind} data-key=${k}>${formatNumber(v)}</td>`;
            })}
            <td title=${new Date(r.createdAt).toISOString()}>${formatAge(r.createdAt, now)}</td>
            <td>${formatDuration(r.buildMs)}</td>
          </tr>`,
      )}
    </tbody>
  </table>`;
}

function RealizationDetail({ rz, error, onClose }) {
  if (error) return html`<section class="panel"><div class="warning" data-testid="rz-error">${error}</div></section>`;
  if (!rz) return null;
  return html` <section class="panel" data-testid="rz-detail" data-rref=${rz.rref}>
    <h2>
      ${rz.name} <span class="ref">${rz.rref}</span>
      <button class="close" onClick=${onClose} title="close">×</button>
    </h2>
    <p class="muted">
      built ${new Date(rz.created).toISOString()} in ${formatDuration(rz.buildMs)}, ${formatBytes(rz.bytes)}
    </p>
    <h3>Files</h3>
    <ul class="files" data-testid="files">
      ${rz.files.map(
        (f) =>
          html`<li data-testid="file" data-type=${f.type}>
            <span class="path">${f.path}${f.type === 'directory' ? '/' : ''}</span>
            ${f.target !== null ? html` → <span class="path">${f.target}</span>` : null}
            ${f.type === 'file' ? html` <span class="muted">${formatBytes(f.size)}</span>` : null}
          </li>`,
      )}
    </ul>
    ${rz.filesTruncated ? html`<p class="muted">(only the first ${rz.files.length} entries)</p>` : null}
    <h3>Config</h3>
    <pre class="config" data-testid="config">${rz.config}</pre>
    <h3>Build log</h3>
    ${
      rz.logTruncated
        ? html`<p class="muted">the last ${formatBytes(LOG_TAIL)} of ${formatBytes(rz.logBytes)}</p>`
        : null
    }
    <pre class="log" data-testid="log">${rz.log === '' ? '(empty)' : rz.log}</pre>
  </section>`;
}

function DiskUse({ view }) {
  return html` <table class="disk" data-testid="disk">
    <thead>
      <tr>
        <th>stage</th>
        <th>realizations</th>
        <th>own</th>
        <th>with its closure</th>
      </tr>
    </thead>
    <tbody>
      ${view.stages.map(
        (s) =>
          html`<tr data-testid="disk-row" data-stage=${s.name}>
            <td>${s.name}</td>
            <td>${s.usage.own.count}</td>
            <td>${formatBytes(s.usage.own.bytes)}</td>
            <td>${formatBytes(s.usage.closure.bytes)}</td>
          </tr>`,
      )}
    </tbody>
    <tfoot>
      <tr>
        <td>whole store</td>
        <td>${view.disk.total.count}</td>
        <td data-testid="disk-total">${formatBytes(view.disk.total.bytes)}</td>
        <td></td>
      </tr>
    </tfoot>
  </table>`;
}

function App() {
  const [view, setView] = useState(null);
  const [error, setError] = useState(null);
  const [stageRef, setStageRef] = useState(null);
  const [rzRef, setRzRef] = useState(null);
  const [rz, setRz] = useState(null);
  const [rzError, setRzError] = useState(null);
  const [now, setNow] = useState(Date.now());
  const [updated, setUpdated] = useState(null);

  useEffect(() => {
    let token = null;
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try {
        const t = await getJson('/api/token');
        if (t.token !== token) {
          const v = await getJson('/api/view');
          token = v.token;
          setView(v);
          setUpdated(Date.now());
        }
        setError(null);
      } catch (e) {
        setError(String(e.message ?? e));
      } finally {
        busy = false;
        setNow(Date.now());
      }
    };
    void tick();
    const id = setInterval(tick, POLL_MS);
    return () => clearInterval(id);
  }, []);

  useEffect(() => {
    if (rzRef === null) return;
    setRz(null);
    setRzError(null);
    getJson(`/api/rz?ref=${encodeURIComponent(rzRef)}`).then(setRz, (e) => setRzError(String(e.message ?? e)));
  }, [rzRef]);

  if (!view) {
    return html`<p class=${error ? 'warning' : 'muted'}>${error ? `Cannot reach the store: ${error}` : 'Loading…'}</p>`;
  }
  const stage = view.stages.find((s) => s.dref === stageRef) ?? view.stages.find((s) => s.dref === defaultStage(view));
  const openRz = (r) => setRzRef(r);
  return html` <header>
      <h1>Cairn</h1>
      <span class="what">${view.label}</span>
      <span class="muted store">${view.store}</span>
      <span class=${error ? 'status warning' : 'status'} data-testid="status" data-token=${view.token}>
        ${error ? `disconnected: ${error}` : `live · updated ${new Date(updated).toLocaleTimeString()}`}
      </span>
    </header>
    <main>
      <section class="panel">
        <h2>Pipeline</h2>
        <div class="dag-wrap">
          <${Dag}
            graph=${view.graph}
            stages=${view.stages}
            selected=${stage?.dref}
            onStage=${setStageRef}
            onRz=${openRz}
          />
        </div>
      </section>
      <nav class="stages" data-testid="stage-list">
        ${view.stages.map(
          (s) =>
            html`<button
              class=${s.dref === stage?.dref ? 'tab active' : 'tab'}
              data-testid="stage-tab"
              data-name=${s.name}
              onClick=${() => setStageRef(s.dref)}
            >
              ${s.name} <span class="count">${s.rows.length}</span>
            </button>`,
        )}
      </nav>
      ${
        stage
          ? html`<section class="panel" data-testid="stage" data-name=${stage.name}>
              <h2>${stage.name} <span class="ref">${stage.drefs.join(' ')}</span></h2>
              <p class="muted" data-testid="chosen-by">
                ${stage.target ? 'target; ' : ''}chosen by ${stage.chosenBy}
                ${stage.hidden > 0 ? `; ${stage.hidden} realization(s) built from other inputs not shown` : ''}
              </p>
              ${stage.problem !== undefined ? html`<p class="warning" data-testid="problem">${stage.problem}</p>` : ''}
              ${
                stage.rows.length === 0
                  ? html`<p class="muted">Not realized yet.</p>`
                  : html`<${ExperimentTable} stage=${stage} now=${now} openRz=${openRz} selectedRz=${rzRef} />`
              }
              <div class="plots">
                ${stage.metricKeys.map((k) => html`<${MetricPlot} metric=${k} rows=${stage.rows} onPick=${openRz} />`)}
              </div>
            </section>`
          : html`<p class="muted">No stages.</p>`
      }
      ${
        rzRef !== null ? html`<${RealizationDetail} rz=${rz} error=${rzError} onClose=${() => setRzRef(null)} />` : null
      }
      <section class="panel">
        <h2>Disk use</h2>
        <${DiskUse} view=${view} />
      </section>
    </main>`;
}

render(html`<${App} />`, document.getElementById('app'));
