/**
 * The closure graph as Graphviz DOT, Mermaid and a plain text tree. Pure.
 * Labels come from the store (stage names are restricted, but nothing here
 * relies on it): every format escapes what its syntax would interpret.
 */
import { CHOSEN_MARK } from './exp-format.js';
import type { Graph, GraphNode } from './graph.js';
import { printable } from './text.js';

const shortId = (n: GraphNode): string => n.id.slice(0, n.kind === 'rz' ? 8 : 7);

/** A node's label lines: the stage and a short DRef, or a realization's short hash and mark. */
function labelLines(n: GraphNode): string[] {
  if (n.kind === 'rz') return [`${n.chosen ? `${CHOSEN_MARK} ` : ''}${shortId(n)}`];
  const lines = [n.name, shortId(n)];
  if (n.chosenBy && !n.imports) lines.push(n.chosenBy);
  if (n.problem) lines.push(n.problem);
  return lines;
}

/**
 * A DOT double-quoted string: `"` and `\` escaped (so `\l`, `\N` and
 * friends are never escapes), line breaks as `\n`; other control
 * characters are shown as `\uXXXX`. Graphviz writes `<` `>` `&` into SVG as
 * entities, so `<script>` in a label stays text.
 */
export function dotString(s: string): string {
  const lines = s.split(/\r\n|\r|\n/).map((l) => printable(l).replace(/\\/g, '\\\\').replace(/"/g, '\\"'));
  return `"${lines.join('\\n')}"`;
}

export function toDot(g: Graph): string {
  const ids = new Map(g.nodes.map((n, i) => [n.id, `n${i}`]));
  const lines = ['digraph cairn {', '  rankdir=LR;', '  node [fontname="Helvetica", fontsize=11];'];
  for (const n of g.nodes) {
    const attrs: string[] = [`label=${dotString(labelLines(n).join('\n'))}`, `tooltip=${dotString(n.id)}`];
    if (n.kind === 'drv') {
      attrs.push('shape=box', 'style="rounded,filled"', `fillcolor="${n.target ? '#dbe8ff' : '#f4f4f4'}"`);
      if (n.imports) attrs.push('color="#999999"');
    } else {
      attrs.push('shape=ellipse', 'fontsize=9');
      if (n.chosen) attrs.push('style="filled,bold"', 'fillcolor="#c8f0c8"', 'penwidth=2');
    }
    lines.push(`  ${ids.get(n.id)!} [${attrs.join(', ')}];`);
  }
  for (const e of g.edges) {
    const style = e.kind === 'rz' ? ' [style=dashed, arrowhead=none]' : '';
    lines.push(`  ${ids.get(e.from)!} -> ${ids.get(e.to)!}${style};`);
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}

/**
 * Mermaid label text: Mermaid reads HTML and `#…;` entity codes inside
 * quoted labels, so every character but letters, digits and a few safe
 * punctuation marks is written as `#NNN;`, line breaks as `<br/>`.
 */
export function mermaidString(s: string): string {
  const lines = s.split(/\r\n|\r|\n/).map((l) =>
    Array.from(l)
      .map((c) => (/[A-Za-z0-9 ._+\-@()*:,]/.test(c) ? c : `#${c.codePointAt(0)!};`))
      .join(''),
  );
  return `"${lines.join('<br/>')}"`;
}

export function toMermaid(g: Graph): string {
  const ids = new Map(g.nodes.map((n, i) => [n.id, `n${i}`]));
  const lines = ['flowchart LR'];
  for (const n of g.nodes) {
    const label = mermaidString(labelLines(n).join('\n'));
    lines.push(`  ${ids.get(n.id)!}${n.kind === 'drv' ? `[${label}]` : `([${label}])`}`);
  }
  for (const e of g.edges) lines.push(`  ${ids.get(e.from)!} ${e.kind === 'rz' ? '-.-' : '-->'} ${ids.get(e.to)!}`);
  const chosen = g.nodes.filter((n) => n.chosen).map((n) => ids.get(n.id)!);
  if (chosen.length > 0) {
    lines.push('  classDef chosen fill:#c8f0c8,stroke:#2a7a2a,stroke-width:2px');
    lines.push(`  class ${chosen.join(',')} chosen`);
  }
  return lines.join('\n') + '\n';
}

/**
 * A tree from the roots, as `nix why-depends` prints: each derivation with
 * its realizations in use; a derivation reached again is shown once more
 * without its subtree (`…`), so a diamond-shaped graph stays linear in size.
 */
export function toTree(g: Graph): string {
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const children = new Map<string, string[]>();
  for (const e of g.edges) {
    const list = children.get(e.from);
    if (list) list.push(e.to);
    else children.set(e.from, [e.to]);
  }
  const lines: string[] = [];
  const expanded = new Set<string>();
  const label = (n: GraphNode): string => {
    if (n.kind === 'rz') return `${n.chosen ? `${CHOSEN_MARK} ` : ''}${n.id}`;
    const extra = [n.chosenBy && !n.imports ? n.chosenBy : '', n.problem ?? ''].filter((x) => x !== '');
    return `${n.id}${extra.length > 0 ? `  (${extra.join('; ')})` : ''}`;
  };
  // Iterative depth-first walk: a 10,000-stage chain must not overflow the stack.
  const stack: { id: string; prefix: string; last: boolean; root: boolean }[] = [];
  for (let i = g.roots.length - 1; i >= 0; i--) stack.push({ id: g.roots[i]!, prefix: '', last: true, root: true });
  while (stack.length > 0) {
    const { id, prefix, last, root } = stack.pop()!;
    const n = byId.get(id);
    if (!n) continue;
    const again = expanded.has(id) && (children.get(id)?.length ?? 0) > 0;
    lines.push(printable(`${prefix}${root ? '' : last ? '└── ' : '├── '}${label(n)}${again ? ' …' : ''}`));
    if (expanded.has(id)) continue;
    expanded.add(id);
    const kids = [...(children.get(id) ?? [])].sort((a, b) => rank(byId.get(a)) - rank(byId.get(b)));
    const childPrefix = root ? '' : prefix + (last ? '    ' : '│   ');
    for (let i = kids.length - 1; i >= 0; i--) {
      stack.push({ id: kids[i]!, prefix: childPrefix, last: i === kids.length - 1, root: false });
    }
  }
  return lines.join('\n') + (lines.length > 0 ? '\n' : '');
}

/** Realizations before dependencies under a derivation. */
const rank = (n: GraphNode | undefined): number => (n?.kind === 'rz' ? 0 : 1);
