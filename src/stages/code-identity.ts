/**
 * The normalized source of a build function: what its code identity hashes.
 *
 * Pure (no I/O): it gets source text and returns a canonical form. The form
 * is the function's tokens, as sucrase's parser (already Cairn's TypeScript
 * stripper) reads them, with everything that is not code left out:
 * - comments, whitespace and line endings (CRLF inside a template literal is
 *   LF, as the language itself says);
 * - TypeScript-only syntax (annotations, generics, `as`/`satisfies`, `!`),
 *   so a TS original and the JavaScript it compiles to agree;
 * - what `tsc` adds or removes when it prints JavaScript: semicolons that
 *   automatic semicolon insertion would supply, trailing commas, parentheses
 *   around a plain operand (`(ctx.config as Cfg).n` prints as `ctx.config.n`);
 * - the function's header: `build(ctx) {}`, `function (ctx) {}` and
 *   `(ctx) => {}` differ only in the flags kept (arrow, async, generator), and
 *   `x => x` is `(x) => x`.
 * - the quotes of string literals (a string is written by its value).
 * A changed name, constant, operator or string is a changed token, so a new
 * identity. See docs/design.md, "Code identity".
 */
import { createRequire } from 'node:module';

interface SucraseToken {
  type: number;
  start: number;
  end: number;
  isType: boolean;
}
interface SucraseScope {
  startTokenIndex: number;
  endTokenIndex: number;
  isFunctionScope: boolean;
}
interface Parsed {
  tokens: SucraseToken[];
  scopes: SucraseScope[];
}

const require = createRequire(import.meta.url);

interface Sucrase {
  parse(input: string, jsx: boolean, ts: boolean, flow: boolean): Parsed;
  name: number;
  string: number;
  num: number;
  eof: number;
  preIncDec: number;
  /** `return`, `break`, `continue`, `yield`: a line break after one ends its statement. */
  restricted: Set<number>;
  /** Tokens sucrase removes besides type ranges: TypeScript-only modifiers and the non-null `!`. */
  tsOnly: Set<number>;
}
let sucrase: Sucrase | undefined;

/**
 * sucrase's parser is not part of its documented API, but it is the parser
 * that strips types for the CLI anyway (one parser, one reading of the
 * file). Loaded on first use: a graph whose stages all have a `version`
 * never needs it.
 */
function loadSucrase(): Sucrase {
  if (sucrase) return sucrase;
  const parser = require('sucrase/dist/parser/index.js') as { parse: Sucrase['parse'] };
  const TT = (require('sucrase/dist/parser/tokenizer/types.js') as { TokenType: Record<string, number> }).TokenType;
  const tsOnly = ['nonNullAssertion', '_public', '_protected', '_private', '_abstract', '_readonly', '_override'];
  sucrase = {
    parse: parser.parse,
    name: TT.name!,
    string: TT.string!,
    num: TT.num!,
    eof: TT.eof!,
    preIncDec: TT.preIncDec!,
    restricted: new Set(['_return', '_break', '_continue', '_yield'].map((n) => TT[n]!)),
    tsOnly: new Set(tsOnly.map((n) => TT[n]!)),
  };
  return sucrase;
}

/** Canonical text of one function; the code identity is its hash. */
export type CanonicalCode = string;

interface Tok {
  text: string;
  type: number;
  start: number;
  end: number;
}

/** Tokens of a parsed source, type-only tokens already dropped. */
class Source {
  readonly toks: Tok[];
  /** For each index of `toks`, the index of the matching bracket (or -1). */
  readonly match: Int32Array;
  /** Arrow function extents [first token, end) in `toks` indices, from the parser's scopes. */
  readonly arrowEnds: Map<number, number>;
  /** canonicalAtOffset's answers (closures made in a loop all start at one offset). */
  readonly byOffset = new Map<number, CanonicalCode | undefined>();

  constructor(
    readonly text: string,
    parsed: Parsed,
    sc: Sucrase,
  ) {
    const toks: Tok[] = [];
    const toKept = new Int32Array(parsed.tokens.length + 1).fill(-1);
    parsed.tokens.forEach((t, i) => {
      // A type token maps to the next kept one.
      toKept[i] = toks.length;
      if (t.isType || sc.tsOnly.has(t.type) || t.type === sc.eof) return;
      toks.push({ text: text.slice(t.start, t.end), type: t.type, start: t.start, end: t.end });
    });
    toKept[parsed.tokens.length] = toks.length;
    this.toks = toks;
    this.match = new Int32Array(toks.length).fill(-1);
    const open: number[] = [];
    toks.forEach((t, i) => {
      if (t.text === '(' || t.text === '[' || t.text === '{' || t.text === '${') open.push(i);
      else if (t.text === ')' || t.text === ']' || t.text === '}') {
        const o = open.pop();
        if (o !== undefined) {
          this.match[o] = i;
          this.match[i] = o;
        }
      }
    });
    this.arrowEnds = new Map();
    for (const s of parsed.scopes) {
      if (!s.isFunctionScope) continue;
      const start = toKept[s.startTokenIndex]!;
      const end = toKept[s.endTokenIndex]!;
      const prev = this.arrowEnds.get(start);
      if (prev === undefined || end > prev) this.arrowEnds.set(start, end);
    }
  }

  /** Index of the first token starting at or after `offset`. */
  tokenAt(offset: number): number {
    let lo = 0;
    let hi = this.toks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.toks[mid]!.start < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

function parse(text: string, ts: boolean, jsx: boolean): Source {
  const sc = loadSucrase();
  return new Source(text, sc.parse(text, jsx, ts, false), sc);
}

const is = (s: Source, i: number, text: string): boolean => s.toks[i]?.text === text;
const isName = (s: Source, i: number): boolean => s.toks[i]?.type === sucrase!.name;

/** One function found in a token list: its flags and its tokens from the parameters to the end. */
interface Found {
  arrow: boolean;
  async: boolean;
  generator: boolean;
  params: number;
  end: number;
}

/**
 * An arrow function starting at token `i` (`async`? then `x` or `(...)`, then
 * `=>`), or undefined.
 */
function arrowAt(s: Source, i: number): Found | undefined {
  let p = i;
  let async = false;
  if (is(s, p, 'async') && !is(s, p + 1, '=>') && (is(s, p + 1, '(') || isName(s, p + 1))) {
    async = true;
    p++;
  }
  let arrowTok: number;
  if (isName(s, p) && is(s, p + 1, '=>')) arrowTok = p + 1;
  else if (is(s, p, '(') && s.match[p]! > p && is(s, s.match[p]! + 1, '=>')) arrowTok = s.match[p]! + 1;
  else return undefined;
  let end: number;
  if (is(s, arrowTok + 1, '{') && s.match[arrowTok + 1]! > arrowTok) end = s.match[arrowTok + 1]! + 1;
  else {
    // An expression body ends where the parser's scope for the arrow ends.
    end = -1;
    for (const start of [i, p]) {
      const e = s.arrowEnds.get(start);
      if (e !== undefined && e > arrowTok) {
        end = e;
        break;
      }
    }
    if (end < 0) return undefined;
  }
  return { arrow: true, async, generator: false, params: p, end };
}

/**
 * A method or `function` whose parameter list opens at token `p`; its flags
 * come from the header before it (back to token `floor` at most).
 */
function functionAt(s: Source, p: number, floor: number): Found | undefined {
  if (!is(s, p, '(')) return undefined;
  const close = s.match[p]!;
  if (close < p || !is(s, close + 1, '{')) return undefined;
  const end = s.match[close + 1]! + 1;
  if (end <= close + 1) return undefined;
  let h = p - 1;
  // The name (or computed key, or none for an anonymous `function`).
  if (is(s, h, ']') && s.match[h]! >= floor) h = s.match[h]! - 1;
  else if (h >= floor && !is(s, h, 'function') && !is(s, h, '*')) h--;
  let async = false;
  let generator = false;
  for (; h >= floor; h--) {
    const t = s.toks[h]!.text;
    if (t === '*') generator = true;
    else if (t === 'async') async = true;
    else if (t !== 'function' && t !== 'get' && t !== 'set' && t !== 'static') break;
  }
  return { arrow: false, async, generator, params: p, end };
}

/** Keywords after which `(` opens a statement's header or a call, not a grouping. */
const HEADER_KEYWORDS = new Set(['if', 'while', 'for', 'switch', 'catch', 'with', 'function', 'super', 'import']);
/** Tokens that continue an expression onto the next line, so a `;` before them is not redundant. */
const CONTINUES = new Set([
  '(',
  '[',
  '`',
  '+',
  '-',
  '/',
  '/=',
  '.',
  '?.',
  ',',
  '<',
  '>',
  '*',
  '%',
  '**',
  '=',
  '==',
  '===',
  '!=',
  '!==',
  '<=',
  '>=',
  '&&',
  '||',
  '??',
  '&',
  '|',
  '^',
  '<<',
  '>>',
  '>>>',
  '?',
  ':',
  'in',
  'instanceof',
  'as',
  'satisfies',
]);
/** Tokens after which a `;` is meaningful: a restricted production or a contextual keyword. */
const BEFORE_MEANINGFUL_SEMI = new Set([
  'return',
  'break',
  'continue',
  'throw',
  'yield',
  'await',
  'async',
  'get',
  'set',
  'static',
  'else',
  'do',
  'let',
]);

/**
 * The tokens [from, to) of `s` in canonical form (see the module comment).
 * Every rule removes only what cannot change what the code does.
 */
function canonicalTokens(s: Source, from: number, to: number): string[] {
  const drop = new Uint8Array(to - from);
  const at = (i: number): Tok | undefined => (i >= from && i < to ? s.toks[i] : undefined);
  // Parentheses around a plain operand (a name, `this` or a literal with
  // member accesses, calls and indexing): innermost first, so `((x))` goes.
  // (The first token may open the parameter list: never a grouping.)
  for (let i = to - 1; i > from; i--) {
    if (!is(s, i, '(')) continue;
    const close = s.match[i]!;
    if (close <= i || close >= to) continue;
    const prev = at(i - 1);
    if (
      prev &&
      (prev.type === sucrase!.name ||
        prev.text === ')' ||
        prev.text === ']' ||
        prev.text === '}' ||
        prev.text === '`' ||
        HEADER_KEYWORDS.has(prev.text))
    )
      continue;
    if (is(s, close + 1, '=>')) continue;
    if (plainOperand(s, drop, from, i + 1, close, prev?.text === 'new')) {
      drop[i - from] = 1;
      drop[close - from] = 1;
    }
  }
  const out: string[] = [];
  const open: string[] = [];
  for (let i = from; i < to; i++) {
    const t = s.toks[i]!;
    if (t.text === '(' || t.text === '[' || t.text === '{' || t.text === '${') open.push(t.text);
    else if (t.text === ')' || t.text === ']' || t.text === '}') open.pop();
    if (drop[i - from]) continue;
    // Inside parentheses a `;` is part of a `for (;;)` header.
    if (t.text === ';' && open[open.length - 1] !== '(' && redundantSemicolon(s, i, from, to)) continue;
    if (t.text === ',' && (is(s, i + 1, ')') || is(s, i + 1, ']') || is(s, i + 1, '}'))) continue;
    if (t.text === '__cairn_import_meta' && is(s, i + 1, '(') && is(s, i + 2, ')') && !is(s, i - 1, '.')) {
      // The CLI's compiled copies call this for `import.meta` (module-compile.ts).
      out.push('import', '.', 'meta');
      i += 2;
      continue;
    }
    if (t.type === sucrase!.string) out.push(canonicalString(t.text));
    // `a\n++b` is `a; ++b`, `a++\nb` is `a++; b`: once the `;` and the line
    // break are gone, only the parser's reading tells them apart.
    else if (t.type === sucrase!.preIncDec) out.push(`pre${t.text}`);
    else out.push(t.text.includes('\r') ? t.text.replace(/\r\n?/g, '\n') : t.text);
    if (endsRestricted(s, i, to)) out.push(';');
  }
  return out;
}

const LINE_BREAK = /[\n\r\u2028\u2029]/;

/**
 * Whether token `i` is a `return`, `break`, `continue` or `yield` whose
 * statement ends right after it without a `;`: at a line break (which ends
 * it: `return\nx` is `return; x`) or at a `}`. tsc prints the `;` there, so
 * the canonical form has it, as it has a written one.
 */
function endsRestricted(s: Source, i: number, to: number): boolean {
  if (!sucrase!.restricted.has(s.toks[i]!.type)) return false;
  const next = i + 1 < to ? s.toks[i + 1] : undefined;
  if (next === undefined || next.text === '}') return true;
  if ([';', ')', ']', ',', ':'].includes(next.text)) return false;
  return LINE_BREAK.test(s.text.slice(s.toks[i]!.end, next.start));
}

const SIMPLE_ESCAPES: Record<string, string> = { n: '\n', t: '\t', r: '\r', b: '\b', f: '\f', v: '\v' };

/**
 * A string literal by its value (`'a'`, `"a"` and `'\x61'` are one string),
 * so a formatter's choice of quotes does not count. Legacy octal escapes,
 * which modules do not allow anyway, keep their text.
 */
function canonicalString(lit: string): string {
  const body = lit.slice(1, -1);
  if (!body.includes('\\')) return JSON.stringify(body);
  let value = '';
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!;
    if (c !== '\\') {
      value += c;
      continue;
    }
    const n = body[++i] ?? '';
    if (n in SIMPLE_ESCAPES) value += SIMPLE_ESCAPES[n];
    else if (n === '0' && !/[0-9]/.test(body[i + 1] ?? '')) value += '\0';
    else if (/[0-9]/.test(n)) return lit;
    else if (n === 'x') {
      value += String.fromCharCode(parseInt(body.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (n === 'u' && body[i + 1] === '{') {
      const close = body.indexOf('}', i);
      value += String.fromCodePoint(parseInt(body.slice(i + 2, close), 16));
      i = close;
    } else if (n === 'u') {
      value += String.fromCharCode(parseInt(body.slice(i + 1, i + 5), 16));
      i += 4;
    } else if (n === '\r') {
      if (body[i + 1] === '\n') i++;
    } // a line continuation
    else if (n !== '\n' && n !== '\u2028' && n !== '\u2029') value += n;
  }
  return JSON.stringify(value);
}

/** Whether tokens [i, close) (minus dropped ones) are a plain operand whose parentheses change nothing. */
function plainOperand(s: Source, drop: Uint8Array, from: number, i: number, close: number, afterNew: boolean): boolean {
  while (i < close && drop[i - from]) i++;
  if (i >= close) return false;
  const head = s.toks[i]!;
  if (head.text === '(' && s.match[i]! < close)
    i = s.match[i]! + 1; // an inner group already found plain
  else if (
    head.type === sucrase!.name ||
    head.text === 'this' ||
    head.type === sucrase!.string ||
    head.type === sucrase!.num
  )
    i++;
  else return false;
  while (i < close) {
    if (drop[i - from]) {
      i++;
      continue;
    }
    const t = s.toks[i]!.text;
    if (t === '.' && isName(s, i + 1)) i += 2;
    else if (t === '[' || (t === '(' && !afterNew)) {
      const m = s.match[i]!;
      if (m <= i || m >= close) return false;
      i = m + 1;
    } else return false;
  }
  return true;
}

/** Whether automatic semicolon insertion would supply this `;` if a line break followed it. */
function redundantSemicolon(s: Source, i: number, from: number, to: number): boolean {
  const next = i + 1 < to ? s.toks[i + 1]!.text : undefined;
  if (next !== undefined && CONTINUES.has(next)) return false;
  const prev = i - 1 >= from ? s.toks[i - 1]! : undefined;
  if (prev === undefined || BEFORE_MEANINGFUL_SEMI.has(prev.text)) return false;
  // `if (x);`, `while (x);`: the `;` is the (empty) body.
  if (prev.text === ')') {
    const open = s.match[i - 1]!;
    const kw = open > from ? s.toks[open - 1]!.text : '';
    if (kw === 'if' || kw === 'while' || kw === 'for' || kw === 'with') return false;
  }
  return true;
}

function render(s: Source, f: Found): CanonicalCode {
  const flags = `${f.arrow ? 'arrow' : 'function'}${f.async ? ' async' : ''}${f.generator ? ' generator' : ''}`;
  let body: string[];
  if (f.arrow && isName(s, f.params)) {
    body = ['(', s.toks[f.params]!.text, ')', ...canonicalTokens(s, f.params + 1, f.end)];
  } else body = canonicalTokens(s, f.params, f.end);
  return JSON.stringify([flags, ...body]);
}

/**
 * The canonical form of a function's source as `Function.prototype.toString`
 * gives it (JavaScript: whatever ran, with types already removed). Undefined
 * if it cannot be read as a function (native code, a class, a private method).
 */
export function canonicalFromText(text: string): CanonicalCode | undefined {
  for (const [open, close] of [
    ['(', ')'],
    ['({', '})'],
    ['(class{', '})'],
  ] as const) {
    let s: Source;
    try {
      s = parse(`${open}${text}\n${close}`, false, false);
    } catch {
      continue;
    }
    const first = s.tokenAt(open.length);
    const f = arrowAt(s, first) ?? headerThenParams(s, first);
    if (f && f.end === s.toks.length - close.length) return render(s, f);
  }
  return undefined;
}

/**
 * The canonical form of a whole module's source (comments, whitespace,
 * types and the other non-code listed above left out), or undefined when it
 * does not parse. Used for the identity of user step modules.
 */
export function canonicalModule(text: string, fileName: string): CanonicalCode | undefined {
  let s: Source;
  try {
    s = parse(text, /\.[cm]?tsx?$/.test(fileName), /\.[jt]sx$/.test(fileName));
  } catch {
    return undefined;
  }
  return JSON.stringify(canonicalTokens(s, 0, s.toks.length));
}

/** For a method or `function` text: the parameter list is the first `(` outside a computed key. */
function headerThenParams(s: Source, first: number): Found | undefined {
  let p = first;
  while (p < s.toks.length && !is(s, p, '(')) {
    if (is(s, p, '[') && s.match[p]! > p) p = s.match[p]!;
    p++;
  }
  return functionAt(s, p, first);
}

/** The last sources read, by file name (a source is compared by identity first, which is quick). */
const sources = new Map<string, Source>();

/**
 * The canonical form of the function found at `offset` in an original source
 * file (TypeScript or JavaScript), where `offset` is what V8 reports as the
 * function's position, carried back through a source map: the start of an
 * arrow function, else the `(` of its parameters. A source map may land a
 * little off (on a method's name, or inside an arrow's parameter list), which
 * is allowed for. Undefined if no function is there.
 */
export function canonicalAtOffset(text: string, fileName: string, offset: number): CanonicalCode | undefined {
  let s = sources.get(fileName);
  if (s?.text !== text) {
    try {
      s = parse(text, /\.[cm]?tsx?$/.test(fileName), /\.[jt]sx$/.test(fileName));
    } catch {
      return undefined;
    }
    if (sources.size >= 16) sources.delete(sources.keys().next().value!);
    sources.set(fileName, s);
  }
  if (s.byOffset.has(offset)) return s.byOffset.get(offset);
  const c = findAt(s, offset);
  s.byOffset.set(offset, c);
  return c;
}

function findAt(s: Source, offset: number): CanonicalCode | undefined {
  const i = s.tokenAt(offset);
  // At the anchor itself, or at a method's name just before its parameters.
  let f = arrowAt(s, i) ?? functionAt(s, i, 0);
  if (!f && (isName(s, i) || s.toks[i]?.type === sucrase!.string) && is(s, i + 1, '(')) f = functionAt(s, i + 1, 0);
  for (let back = 1; !f && back <= 2 && i - back >= 0; back++) {
    // Inside an arrow's parameter list (a transpiler dropped its parentheses).
    const g = arrowAt(s, i - back);
    if (g && g.params <= i && s.match[g.params]! >= i) f = g;
  }
  return f ? render(s, f) : undefined;
}
