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
  /**
   * Columns: a derivation's id, then its realizations' ids, drawn top down in
   * one framed column (a Graphviz cluster) with no edges between them.
   */
  columns?: readonly (readonly string[])[];
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
  /** The frame of each column, by its first id. */
  frames: Record<string, NodeBox>;
}

/** Letters, digits and a few safe marks stand for themselves; anything else for a same-width `_`. */
const labelFor = (name: string): string => name.slice(0, 60).replace(/[^\w .:-]/g, '_') || '_';

/** DOT text for the graph; `ids` maps each node's id to its neutral DOT id. Pure. */
export function dotSource(g: LayoutInput): { text: string; ids: Map<string, string> } {
  const ids = new Map<string, string>();
  g.nodes.forEach((n, i) => ids.set(n.id, `n${i}`));
  const lines = [
    'digraph cairn {',
    '  rankdir=LR; nodesep=0.12; ranksep=0.6; newrank=true;',
    '  node [fontsize=12 margin="0.15,0.06"];',
  ];
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const node = (n: LayoutInput['nodes'][number]): string => {
    const shape = n.kind === 'drv' ? 'box' : 'ellipse';
    // A realization's node shows a short hash; a derivation's its stage name.
    const label = n.kind === 'drv' ? labelFor(n.name) : labelFor(n.id.slice(0, 8));
    return `${ids.get(n.id)} [shape=${shape} label="${label}"];`;
  };
  const inColumn = new Set<string>();
  (g.columns ?? []).forEach((col, i) => {
    const members = col.filter((id) => byId.has(id) && !inColumn.has(id));
    if (members.length === 0) return;
    for (const id of members) inColumn.add(id);
    lines.push(`  subgraph cluster_${i} {`);
    for (const id of members) lines.push(`    ${node(byId.get(id)!)}`);
    const dotIds = members.map((id) => ids.get(id)!);
    // In a left-to-right graph a rank stacks upwards along an edge chain: chained in reverse, the first is on top.
    if (dotIds.length > 1) {
      lines.push(`    { rank=same; ${dotIds.join('; ')}; }`);
      lines.push(`    ${[...dotIds].reverse().join(' -> ')} [style=invis];`);
    }
    lines.push('  }');
  });
  for (const n of g.nodes) if (!inColumn.has(n.id)) lines.push(`  ${node(n)}`);
  for (const e of g.edges) {
    const a = ids.get(e.from);
    const b = ids.get(e.to);
    if (a !== undefined && b !== undefined) lines.push(`  ${a} -> ${b};`);
  }
  lines.push('}');
  return { text: lines.join('\n') + '\n', ids };
}

interface DotJson {
  bb?: string;
  objects?: { _gvid: number; name: string; pos?: string; width?: string; height?: string }[];
  edges?: { tail: number; head: number; pos?: string; style?: string }[];
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
    // The invisible edges only order a column.
    if (from === undefined || to === undefined || e.pos === undefined || e.style === 'invis') continue;
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
  const frames: Record<string, NodeBox> = {};
  for (const col of g.columns ?? []) {
    const boxes = col.map((id) => nodes[id]).filter((b) => b !== undefined);
    if (boxes.length === 0) continue;
    const x0 = Math.min(...boxes.map((b) => b.x - b.w / 2)) - FRAME_PAD;
    const x1 = Math.max(...boxes.map((b) => b.x + b.w / 2)) + FRAME_PAD;
    const y0 = Math.min(...boxes.map((b) => b.y - b.h / 2)) - FRAME_PAD;
    const y1 = Math.max(...boxes.map((b) => b.y + b.h / 2)) + FRAME_PAD;
    frames[col[0]!] = { x: (x0 + x1) / 2, y: (y0 + y1) / 2, w: x1 - x0, h: y1 - y0 };
  }
  return { width, height, nodes, edges, frames };
}

/** Points between a column's nodes and its frame (dot's cluster margin is 8). */
const FRAME_PAD = 6;

export type LayoutResult = { layout: Layout } | { error: string };

/** Runs `dot`; a missing Graphviz or a failing dot is an answer the page shows, not a crash. */
export function layoutGraph(g: LayoutInput): LayoutResult {
  if (g.nodes.length === 0) return { layout: { width: 0, height: 0, nodes: {}, edges: [], frames: {} } };
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
