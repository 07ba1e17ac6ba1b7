/**
 * Where a function's original source is, when a transpiler that reprints code
 * (esbuild under tsx, for one) ran in between: `Function.prototype.toString`
 * then gives the reprinted text, which differs from loader to loader.
 *
 * V8 knows each function's position in the script it ran ([[FunctionLocation]],
 * which only the inspector protocol exposes), and the script names its source
 * map (tsx inlines one; `tsc --sourceMap` writes one next to the file). The
 * position carried back through the map, in the original text, is where the
 * function's original source starts. Everything here is synchronous: an
 * in-process inspector session answers before `post` returns.
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface FunctionOrigin {
  /** The original source text, and a name whose extension says its language. */
  readonly text: string;
  readonly fileName: string;
  /** Where V8 puts the function (arrow start, else its parameter list), in `text`. */
  readonly offset: number;
}

/** V8's [[FunctionLocation]] internal property (Debugger.Location). */
interface FunctionLocation {
  scriptId: string;
  lineNumber: number;
  columnNumber: number;
}

interface InspectorSession {
  post(method: string, params: object, cb: (err: Error | null, res: unknown) => void): void;
  on(event: string, listener: (m: { params: { scriptId: string; url: string; sourceMapURL?: string } }) => void): void;
}

interface ScriptInfo {
  url: string;
  sourceMapURL: string;
  /** Its decoded source map, once read (null: none that can be used). */
  map?: SourceMap | null;
}

let session: InspectorSession | null | undefined;
const scripts = new Map<string, ScriptInfo>();

/** `R`: the shape of the answer to `method` (the inspector protocol's, trusted). */
function post<R>(method: string, params: object): R | undefined {
  let result: R | undefined;
  // Set in the callback, which runs synchronously: TypeScript cannot see that, so the type is widened by hand.
  let error = null as Error | null;
  let answered = false;
  session!.post(method, params, (err, res) => {
    error = err;
    result = res as R;
    answered = true;
  });
  if (error) throw error;
  if (!answered) throw new Error(`inspector did not answer ${method} synchronously`);
  return result;
}

function connect(): InspectorSession | null {
  if (session !== undefined) return session;
  session = null;
  try {
    const { Session } = require_('node:inspector') as typeof import('node:inspector');
    const s = new Session();
    s.connect();
    session = s;
    session.on('Debugger.scriptParsed', (m) => {
      // Each refresh lists every script again: keep what was learnt (a decoded map) about known ones.
      if (scripts.has(m.params.scriptId)) return;
      scripts.set(m.params.scriptId, { url: m.params.url, sourceMapURL: m.params.sourceMapURL ?? '' });
    });
  } catch {
    /* a Node built without the inspector: callers fall back to toString() */
  }
  return session;
}

// Loaded on first use, and not at all where Node was built without it.
const require_ = createRequire(import.meta.url);

/** Whether the debugger is on until the current task ends, reporting each new script as it compiles. */
let listening = false;
/** Whether the scripts were listed already in the current task. */
let listedThisTask = false;

/**
 * Learns the scripts loaded so far. The debugger is on only for this: it
 * reports every script on enabling (and then each new one as it compiles,
 * synchronously, in-process), and is switched off again at once, since V8
 * runs everything slower while it is on (a third more CPU for a graph of
 * 1,000 closures). Only when a second listing is needed in the same task (a
 * loop making functions with `new Function` and instantiating each) does it
 * stay on until the task ends, so that such a loop pays for one enabling.
 */
function refreshScripts(): void {
  if (listening) return;
  post('Debugger.enable', {});
  if (!listedThisTask) {
    listedThisTask = true;
    setImmediate(() => {
      listedThisTask = false;
    }).unref();
    post('Debugger.disable', {});
    return;
  }
  listening = true;
  setImmediate(() => {
    listening = false;
    try {
      post('Debugger.disable', {});
    } catch {
      /* the session is gone */
    }
  }).unref();
}

const HOLDER = Symbol.for('cairn.function-origin');
const GROUP = 'cairn-function-origin';

/** V8's position of a function: script, 0-based line and column. */
function locate(fn: (...args: never) => unknown): { scriptId: string; line: number; column: number } | undefined {
  (globalThis as Record<symbol, unknown>)[HOLDER] = fn;
  try {
    const expression = `globalThis[Symbol.for('cairn.function-origin')]`;
    const ev = post<{ result?: { objectId?: string } }>('Runtime.evaluate', { expression, objectGroup: GROUP });
    const objectId = ev?.result?.objectId;
    if (!objectId) return undefined;
    // Without indexed properties the answer is small and quick (a tenth of the time).
    const props = post<{ internalProperties?: { name: string; value?: { value?: FunctionLocation } }[] }>(
      'Runtime.getProperties',
      { objectId, ownProperties: true, nonIndexedPropertiesOnly: true },
    );
    const loc = props?.internalProperties?.find((p) => p.name === '[[FunctionLocation]]')?.value?.value;
    if (!loc) return undefined;
    return { scriptId: String(loc.scriptId), line: loc.lineNumber, column: loc.columnNumber };
  } finally {
    delete (globalThis as Record<symbol, unknown>)[HOLDER];
    try {
      post('Runtime.releaseObjectGroup', { objectGroup: GROUP });
    } catch {
      /* nothing held */
    }
  }
}

/** A decoded source map: per generated line, segments [genCol, source, line, col] sorted by genCol. */
interface SourceMap {
  lines: number[][][];
  sources: string[];
  /** Each source's text (from the map, else read once from its file) and where its lines start. */
  contents: (string | null)[];
  lineStarts: (number[] | undefined)[];
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < B64.length; i++) B64_VALUE[B64.charCodeAt(i)] = i;

/** Decodes the `mappings` of a version 3 source map (base64 VLQ, fields relative to the previous segment). */
function decodeMappings(mappings: string): number[][][] {
  const lines: number[][][] = [];
  let line: number[][] = [];
  let source = 0,
    srcLine = 0,
    srcCol = 0;
  let genCol = 0;
  let fields: number[] = [];
  let value = 0,
    shift = 0;
  const endSegment = (): void => {
    if (fields.length >= 4) {
      genCol += fields[0]!;
      source += fields[1]!;
      srcLine += fields[2]!;
      srcCol += fields[3]!;
      line.push([genCol, source, srcLine, srcCol]);
    } else if (fields.length >= 1) genCol += fields[0]!;
    fields = [];
  };
  for (let i = 0; i <= mappings.length; i++) {
    const c = i < mappings.length ? mappings.charCodeAt(i) : 59;
    if (c === 44 || c === 59) {
      // ',' ends a segment, ';' a line
      endSegment();
      if (c === 59) {
        line.sort((a, b) => a[0]! - b[0]!);
        lines.push(line);
        line = [];
        genCol = 0;
      }
      continue;
    }
    const digit = c < 128 ? B64_VALUE[c]! : -1;
    if (digit < 0) throw new Error('bad source map');
    value += (digit & 31) * 2 ** shift;
    if (digit & 32) {
      shift += 5;
      continue;
    }
    fields.push(value % 2 === 1 ? -(value - 1) / 2 : value / 2);
    value = 0;
    shift = 0;
  }
  return lines;
}

function readText(url: URL): string | null {
  if (url.protocol !== 'file:') return null;
  try {
    return fs.readFileSync(fileURLToPath(url), 'utf8');
  } catch {
    return null;
  }
}

// Cached per script (a data: URL can be most of a megabyte: never used as a key).
function loadMap(script: ScriptInfo): SourceMap | null {
  if (script.map !== undefined) return script.map;
  let map: SourceMap | null = null;
  try {
    let json: string | null;
    let base: URL;
    const ref = script.sourceMapURL;
    if (ref.startsWith('data:')) {
      const comma = ref.indexOf(',');
      const meta = ref.slice(5, comma);
      const payload = ref.slice(comma + 1);
      json = meta.endsWith(';base64') ? Buffer.from(payload, 'base64').toString('utf8') : decodeURIComponent(payload);
      base = new URL(script.url);
    } else {
      base = new URL(ref, script.url);
      json = readText(base);
    }
    if (json !== null) {
      const raw = JSON.parse(json) as {
        mappings?: unknown;
        sources?: unknown;
        sourceRoot?: unknown;
        sourcesContent?: unknown;
      };
      if (typeof raw.mappings === 'string' && Array.isArray(raw.sources)) {
        const root =
          typeof raw.sourceRoot === 'string' && raw.sourceRoot !== '' ? raw.sourceRoot.replace(/\/?$/, '/') : '';
        map = {
          lines: decodeMappings(raw.mappings),
          sources: raw.sources.map((s) => new URL(root + String(s), base).href),
          contents: raw.sources.map((_, i) => {
            const c: unknown = Array.isArray(raw.sourcesContent) ? raw.sourcesContent[i] : null;
            return typeof c === 'string' ? c : null;
          }),
          lineStarts: [],
        };
      }
    }
  } catch {
    map = null;
  }
  script.map = map;
  return map;
}

/** Where each line of `text` starts; lines end at LF, CRLF or CR, as source maps count them. */
function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 || (c === 13 && text.charCodeAt(i + 1) !== 10)) starts.push(i + 1);
  }
  return starts;
}

/**
 * The original source of `fn`, when it ran from a script with a source map
 * whose source can be read. Undefined otherwise: then the script's own text
 * (which `fn.toString()` gives) is the closest thing to an original there is.
 */
export function functionOrigin(fn: (...args: never) => unknown): FunctionOrigin | undefined {
  try {
    if (!connect()) return undefined;
    const loc = locate(fn);
    if (!loc) return undefined;
    let script = scripts.get(loc.scriptId);
    if (!script) {
      refreshScripts();
      script = scripts.get(loc.scriptId);
    }
    if (!script?.sourceMapURL) return undefined;
    const map = loadMap(script);
    const segs = map?.lines[loc.line];
    if (!map || !segs || segs.length === 0) return undefined;
    let seg: number[] | undefined;
    for (const s of segs) {
      if (s[0]! <= loc.column) seg = s;
      else break;
    }
    if (!seg) return undefined;
    const source = map.sources[seg[1]!];
    if (source === undefined) return undefined;
    const index = seg[1]!;
    if (map.contents[index] === null && map.lineStarts[index] === undefined) {
      map.contents[index] = readText(new URL(source));
    }
    const text = map.contents[index];
    if (text === null || text === undefined) return undefined;
    const starts = (map.lineStarts[index] ??= lineStarts(text));
    // Segments give the start of a token; where V8's position lies past it
    // on the same token (rare), the offset still lands on that token.
    const lineStart = starts[seg[2]!];
    if (lineStart === undefined) return undefined;
    const offset = lineStart + seg[3]!;
    return { text, fileName: new URL(source).pathname, offset };
  } catch {
    return undefined;
  }
}
