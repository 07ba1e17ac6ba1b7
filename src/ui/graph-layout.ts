/**
 * The DAG's layout, from Graphviz's real `dot`: the graph goes in as DOT
 * with neutral ids (n0, n1, ...) and sanitised labels (only their width
 * matters to the layout), and comes back as JSON positions that the page
 * draws itself. So nothing a build or a stage file named ever reaches dot
 * unescaped, and the page never inserts dot's SVG markup.
 */
import { spawnSync } from 'node:child_process';

export interface LayoutInput {
  nodes: readonly { id: string; kind: 'drv' | 'rz'; name: string }[];
  edges: readonly { from: string; to: string }[];
  /** Groups of node ids drawn in one column (rank). */
  sameRank?: readonly (readonly string[])[];
}

export interface NodeBox {
  /** Centre, in points, y downwards. */
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface Layout {
  width: number;
  height: number;
  nodes: Record<string, NodeBox>;
  /** One SVG path (`M … C …`) per edge, in the order of `LayoutInput.edges`, ending at the head's border. */
  edges: { from: string; to: string; path: string }[];
}

/** Letters, digits and a few safe marks stand for themselves; anything else for a same-width `_`. */
const labelFor = (name: string): string => name.slice(0, 60).replace(/[^\w .:-]/g, '_') || '_';

/** DOT text for the graph; `ids` maps each node's id to its neutral DOT id. Pure. */
export function dotSource(g: LayoutInput): { text: string; ids: Map<string, string> } {
  const ids = new Map<string, string>();
  g.nodes.forEach((n, i) => ids.set(n.id, `n${i}`));
  const lines = [
    'digraph cairn {',
    '  rankdir=LR; nodesep=0.25; ranksep=0.5;',
    '  node [fontsize=12 margin="0.15,0.06"];',
  ];
  for (const n of g.nodes) {
    const shape = n.kind === 'drv' ? 'box' : 'ellipse';
    // A realization's node shows a short hash; a derivation's its stage name.
    const label = n.kind === 'drv' ? labelFor(n.name) : labelFor(n.id.slice(0, 8));
    lines.push(`  ${ids.get(n.id)} [shape=${shape} label="${label}"];`);
  }
  for (const e of g.edges) {
    const a = ids.get(e.from);
    const b = ids.get(e.to);
    if (a !== undefined && b !== undefined) lines.push(`  ${a} -> ${b};`);
  }
  for (const group of g.sameRank ?? []) {
    const members = group.map((id) => ids.get(id)).filter((x) => x !== undefined);
    if (members.length > 1) lines.push(`  { rank=same; ${members.join('; ')}; }`);
  }
  lines.push('}');
  return { text: lines.join('\n') + '\n', ids };
}

interface DotJson {
  bb?: string;
  objects?: { _gvid: number; name: string; pos?: string; width?: string; height?: string }[];
  edges?: { tail: number; head: number; pos?: string }[];
}

const num = (s: string): number => {
  const v = Number(s);
  if (!Number.isFinite(v)) throw new Error(`dot gave a number that is not one: ${JSON.stringify(s)}`);
  return v;
};

/** A point `x,y` of dot's (y upwards) turned into page coordinates (y downwards). */
const point = (s: string, height: number): [number, number] => {
  const [x, y] = s.split(',');
  return [num(x ?? ''), height - num(y ?? '')];
};

/** Parses `dot -Tjson0` output back onto the graph's own ids. Pure. */
export function parseLayout(json: string, g: LayoutInput, ids: ReadonlyMap<string, string>): Layout {
  const d = JSON.parse(json) as DotJson;
  const bb = (d.bb ?? '0,0,0,0').split(',').map(num);
  const width = bb[2] ?? 0;
  const height = bb[3] ?? 0;
  const byDotId = new Map([...ids].map(([id, dotId]) => [dotId, id]));
  const byGvid = new Map<number, string>();
  const nodes: Record<string, NodeBox> = {};
  for (const o of d.objects ?? []) {
    const id = byDotId.get(o.name);
    if (id === undefined || o.pos === undefined) continue;
    byGvid.set(o._gvid, id);
    const [x, y] = point(o.pos, height);
    nodes[id] = { x, y, w: num(o.width ?? '0') * 72, h: num(o.height ?? '0') * 72 };
  }
  const edges: Layout['edges'] = [];
  for (const e of d.edges ?? []) {
    const from = byGvid.get(e.tail);
    const to = byGvid.get(e.head);
    if (from === undefined || to === undefined || e.pos === undefined) continue;
    let end: [number, number] | undefined;
    const pts: [number, number][] = [];
    for (const part of e.pos.trim().split(/\s+/)) {
      if (part.startsWith('e,')) end = point(part.slice(2), height);
      else if (!part.startsWith('s,')) pts.push(point(part, height));
    }
    if (pts.length === 0) continue;
    const f = (p: [number, number]): string => `${p[0].toFixed(1)},${p[1].toFixed(1)}`;
    let path = `M${f(pts[0]!)}`;
    // A B-spline of 3n+1 points: the first, then n cubic segments.
    for (let i = 1; i + 2 < pts.length; i += 3) {
      path += ` C${f(pts[i]!)} ${f(pts[i + 1]!)} ${f(pts[i + 2]!)}`;
    }
    if (end) path += ` L${f(end)}`;
    edges.push({ from, to, path });
  }
  return { width, height, nodes, edges };
}

export type LayoutResult = { layout: Layout } | { error: string };

/** Runs `dot`; a missing Graphviz or a failing dot is an answer the page shows, not a crash. */
export function layoutGraph(g: LayoutInput): LayoutResult {
  if (g.nodes.length === 0) return { layout: { width: 0, height: 0, nodes: {}, edges: [] } };
  const { text, ids } = dotSource(g);
  const r = spawnSync('dot', ['-Tjson0'], { input: text, encoding: 'utf8', timeout: 30_000, maxBuffer: 64 << 20 });
  if (r.error) {
    const missing = (r.error as NodeJS.ErrnoException).code === 'ENOENT';
    return { error: missing ? 'Graphviz is not installed (no `dot` on PATH)' : `dot failed: ${r.error.message}` };
  }
  if (r.status !== 0) return { error: `dot exited with ${r.status ?? r.signal}: ${r.stderr.slice(0, 500)}` };
  try {
    return { layout: parseLayout(r.stdout, g, ids) };
  } catch (e) {
    return { error: `cannot read dot's layout: ${(e as Error).message}` };
  }
}
