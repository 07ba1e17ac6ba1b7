import type { FileInput, Stage } from '../stage.js';
import { importStage } from './import-stage.js';
import { InputHasher, type InputDigest } from './input-hash.js';
import { defaultStatCacheFile, lazyStatCache } from './stat-cache.js';

/** A stage's file input with the derivation that imports its current content. */
export interface ResolvedInput {
  readonly input: FileInput;
  readonly stage: Stage;
}

let shared: { file: string | null; hasher: InputHasher } | undefined;

/**
 * The hasher instantiate() uses unless given one: backed by the user's stat
 * cache, opened on first use (a graph without file inputs never opens it)
 * and kept for the process.
 */
export function userInputHasher(): InputHasher {
  const file = defaultStatCacheFile();
  if (shared === undefined || shared.file !== file) {
    shared?.hasher.close();
    shared = { file, hasher: new InputHasher(lazyStatCache(file)) };
  }
  return shared.hasher;
}

/**
 * Hashes stages' file inputs during one instantiation, each path once, and
 * gives each input the import derivation of its current content.
 */
export class FileImports {
  private readonly digests = new Map<string, InputDigest>();
  private readonly imports = new Map<string, Stage>();
  private hasher: InputHasher | undefined;
  private used = false;

  constructor(private readonly given?: InputHasher) {}

  of(s: Stage): ResolvedInput[] {
    this.used = true;
    this.hasher ??= this.given ?? userInputHasher();
    return s.files.map((input) => {
      let digest = this.digests.get(input.path);
      if (digest === undefined) {
        digest = this.hasher!.digest(input.path, input.key);
        this.digests.set(input.path, digest);
      }
      const id = `${input.path}\0${digest.kind}\0${digest.hash}\0${digest.exec}`;
      let stage = this.imports.get(id);
      if (stage === undefined) {
        stage = importStage(input, digest);
        this.imports.set(id, stage);
      }
      return { input, stage };
    });
  }

  /** Records what was hashed in the stat cache. */
  done(): void {
    if (this.used) this.hasher?.flush();
  }
}
