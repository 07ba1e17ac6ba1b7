/**
 * File inputs as a builder sees them: not the user's files (a builder has no
 * checkout) but the import derivations the derivation to build records.
 * Every drv.json with file inputs names, per declared path, the DRef of the
 * import derivation of its content (`"files": {KEY: DREF}`), and that import
 * derivation's config holds the content's digest (import-stage.ts). So the
 * digests the stage had where it was instantiated are read back from the
 * store's derivations, and instantiating the code object again with them
 * gives the same DRefs; the content itself arrives as the imports'
 * realizations, like any other input.
 */
import { CairnError } from '../../errors.js';
import { parseRef, type DRef } from '../../store/refs.js';
import { entryName } from './import-stage.js';
import { InputHasher, type InputDigest } from './input-hash.js';

/** The code identity of every import derivation (import-stage.ts). */
const IMPORT_VERSION = 'cairn-input-1';

/** One recorded file input: the content digest its import derivation names. */
export interface RecordedInput {
  key: string;
  /** The import derivation. */
  dref: DRef;
  /** Its entry name (the basename of the input where it was declared). */
  file: string;
  digest: InputDigest;
}

type DrvJson = { deps?: unknown; files?: unknown; config?: unknown; code?: unknown };

function parseDrv(text: string): DrvJson | undefined {
  try {
    const j = JSON.parse(text) as unknown;
    return typeof j === 'object' && j !== null && !Array.isArray(j) ? j : undefined;
  } catch {
    return undefined;
  }
}

/** The digest an import derivation's config names, or undefined if it is not an import derivation. */
export function importDigest(drv: DrvJson): { file: string; digest: InputDigest } | undefined {
  const code = drv.code as { version?: unknown } | undefined;
  const c = drv.config as { file?: unknown; kind?: unknown; hash?: unknown; exec?: unknown } | undefined;
  if (code?.version !== IMPORT_VERSION || typeof c !== 'object' || c === null) return undefined;
  if (typeof c.file !== 'string' || typeof c.hash !== 'string') return undefined;
  if (c.kind !== 'file' && c.kind !== 'dir') return undefined;
  const exec = c.kind === 'file' && c.exec === true;
  return { file: c.file, digest: { kind: c.kind, hash: c.hash, exec, files: 0, bytes: 0 } };
}

/**
 * The file inputs recorded in the derivations of `dref`'s closure that the
 * store holds (`read` gives a derivation's drv.json). Pure apart from `read`.
 */
export async function recordedInputs(
  dref: DRef,
  read: (d: DRef) => Promise<string | undefined>,
): Promise<RecordedInput[]> {
  const out: RecordedInput[] = [];
  const seen = new Set<DRef>([dref]);
  const queue: DRef[] = [dref];
  while (queue.length > 0) {
    const d = queue.pop()!;
    const text = await read(d);
    const drv = text === undefined ? undefined : parseDrv(text);
    if (drv === undefined) continue;
    const files = drv.files;
    if (typeof files === 'object' && files !== null && !Array.isArray(files)) {
      for (const [key, imp] of Object.entries(files as Record<string, unknown>)) {
        if (typeof imp !== 'string' || !isDRef(imp)) continue;
        const impText = await read(imp);
        const got = impText === undefined ? undefined : importDigest(parseDrv(impText) ?? {});
        if (got) out.push({ key, dref: imp, ...got });
      }
    }
    for (const dep of Array.isArray(drv.deps) ? drv.deps : []) {
      if (typeof dep === 'string' && isDRef(dep) && !seen.has(dep)) {
        seen.add(dep);
        queue.push(dep);
      }
    }
  }
  return out;
}

function isDRef(s: string): s is DRef {
  try {
    return parseRef(s).kind === 'drv';
  } catch {
    return false;
  }
}

/** What a file input not recorded in the closure hashes to here: no real content has this digest. */
const UNRECORDED = 'unrecorded';

/**
 * An InputHasher that never reads a file: a declared input's digest is the
 * recorded one of the same key and entry name. An input the closure does
 * not record (a stage of the same file that is not being built) gets a
 * digest no content has, so its stage instantiates to a DRef of its own
 * and never matches one in the store; `unrecorded` lists them for errors.
 */
export class RecordedInputHasher extends InputHasher {
  readonly unrecorded = new Set<string>();
  private readonly byKey = new Map<string, RecordedInput[]>();

  constructor(recorded: readonly RecordedInput[]) {
    super();
    for (const r of recorded) {
      const list = this.byKey.get(r.key) ?? [];
      if (!list.some((x) => x.dref === r.dref)) list.push(r);
      this.byKey.set(r.key, list);
    }
  }

  override digest(abs: string, input: string): InputDigest {
    let found = this.byKey.get(input) ?? [];
    // The entry name tells apart two inputs of one key; where it was declared is not where `abs` lies here,
    // so an input such as `.` or `..` is named as recorded, not after this host's path.
    if (found.length > 1) found = found.filter((r) => r.file === entryName(abs));
    if (found.length === 1) return { ...found[0]!.digest, entry: found[0]!.file };
    if (found.length > 1) {
      // Two stages declare inputs with the same path relative to different directories: which is which
      // cannot be told from the derivations (they record content, not where it came from).
      throw new CairnError(
        'E_CODE_NOT_PORTABLE',
        `file input ${input} is recorded with ${found.length} different contents in this derivation's closure ` +
          `(${found.map((f) => f.dref).join(', ')}): give the inputs distinct paths or names`,
        { input, imports: found.map((f) => f.dref) },
      );
    }
    this.unrecorded.add(input);
    return { kind: 'file', hash: UNRECORDED, exec: false, files: 0, bytes: 0 };
  }

  override flush(): void {
    /* nothing was hashed: no stat cache to write */
  }
}
