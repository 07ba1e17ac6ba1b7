/**
 * The module graph of Cairn's own sources, for the import-cycle check
 * (test/import-cycles.test.ts). An edge is any relative module specifier a
 * file names: `import`/`export ... from` (type-only ones too: they do not
 * make a runtime cycle, but they tie two layers together all the same),
 * `import('./x.js')` with a literal, and `typeof import('./x.js')`. That is
 * the definition under which issue 15 counted four cycles on 06d8d08.
 * Package and `node:` imports are not edges: only Cairn's layering matters.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';

/** Module (path relative to the root, `/`-separated) -> the modules it imports, sorted, no duplicates. */
export type ImportGraph = Map<string, string[]>;

/** Every .ts file (not .d.ts) under `dirs` of `root`; symlinks are not followed. */
export function sourceFiles(root: string, dirs: readonly string[]): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = `${rel}/${e.name}`;
      if (e.isDirectory()) walk(child);
      else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(child);
    }
  };
  for (const d of dirs) walk(d);
  return out.sort();
}

/** The relative specifiers `text` names, in source order. */
export function relativeSpecifiers(fileName: string, text: string): string[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const specs: string[] = [];
  const visit = (n: ts.Node): void => {
    let spec: ts.Node | undefined;
    if (ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) spec = n.moduleSpecifier;
    else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword) spec = n.arguments[0];
    else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument)) spec = n.argument.literal;
    if (spec && ts.isStringLiteralLike(spec) && spec.text.startsWith('.')) specs.push(spec.text);
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return specs;
}

/**
 * The graph of `files` (relative to `root`). A specifier names the .js file
 * tsc emits, so `./x.js` is `./x.ts` here. A relative import of a file that
 * is not among `files` is reported in `unresolved` (a typo, or a module
 * outside the scanned directories).
 */
export function importGraph(root: string, files: readonly string[]): { graph: ImportGraph; unresolved: string[] } {
  const known = new Set(files);
  const graph: ImportGraph = new Map();
  const unresolved: string[] = [];
  for (const file of files) {
    const deps = new Set<string>();
    for (const spec of relativeSpecifiers(file, fs.readFileSync(path.join(root, file), 'utf8'))) {
      const target = path.posix.join(path.posix.dirname(file), spec).replace(/\.js$/, '.ts');
      if (known.has(target)) deps.add(target);
      else unresolved.push(`${file}: ${spec}`);
    }
    graph.set(file, [...deps].sort());
  }
  return { graph, unresolved };
}

/** The strongly connected components with more than one module, or a module importing itself (Tarjan). */
export function cyclicComponents(graph: ImportGraph): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  // Recursive: the graph is a few hundred modules deep at most.
  const connect = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) !== index.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(scc.sort());
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) connect(v);
  return out.sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
}

/** The shortest import chain from `from` back to itself (breadth first), as `a -> b -> a`. */
export function shortestCycle(graph: ImportGraph, from: string): string[] | null {
  const parent = new Map<string, string>();
  const queue = [from];
  for (let i = 0; i < queue.length; i++) {
    const v = queue[i]!;
    for (const w of graph.get(v) ?? []) {
      if (w === from) {
        const chain = [from];
        for (let u: string | undefined = v; u !== undefined && u !== from; u = parent.get(u)) chain.splice(1, 0, u);
        return [...chain, from];
      }
      if (!parent.has(w)) {
        parent.set(w, v);
        queue.push(w);
      }
    }
  }
  return null;
}

/** One line per distinct shortest cycle through each module of each component. */
export function describeCycles(graph: ImportGraph): string[] {
  const lines = new Set<string>();
  for (const scc of cyclicComponents(graph)) {
    for (const m of scc) {
      const c = shortestCycle(graph, m);
      if (!c) continue;
      // The same cycle found from another member is printed once: rotate it to start at its smallest module.
      const ring = c.slice(0, -1);
      const start = ring.indexOf([...ring].sort()[0]!);
      const rotated = [...ring.slice(start), ...ring.slice(0, start)];
      lines.add([...rotated, rotated[0]!].join(' -> '));
    }
  }
  return [...lines];
}
