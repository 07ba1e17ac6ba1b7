/**
 * The ensemble's global context, persisted as JSON so a restart or reload
 * sees the values a postStartInit set earlier. Written atomically (temp
 * file + rename) on every set, so a crash never leaves half a file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import { isReservedContextKey } from './interpolate.js';
import type { ServiceContext } from './spec.js';

export class FileContext implements ServiceContext {
  private values: Record<string, string>;

  constructor(readonly file: string) {
    this.values = FileContext.read(file);
  }

  static read(file: string): Record<string, string> {
    let raw: string;
    try {
      raw = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw e;
    }
    const v = JSON.parse(raw) as unknown;
    if (
      typeof v !== 'object' ||
      v === null ||
      Array.isArray(v) ||
      Object.values(v).some((x) => typeof x !== 'string')
    ) {
      throw new CairnError('E_SERVICE_INVALID', `context file ${file} must hold a JSON object of strings`, { file });
    }
    return v as Record<string, string>;
  }

  get(key: string): string | undefined {
    return Object.hasOwn(this.values, key) ? this.values[key] : undefined;
  }

  set(key: string, value: string): void {
    if (typeof key !== 'string' || key === '' || typeof value !== 'string') {
      throw new CairnError(
        'E_SERVICE_FAILED',
        `context.set needs a key and a string value, got ${JSON.stringify(key)} = ${JSON.stringify(value)}`,
      );
    }
    if (isReservedContextKey(key)) {
      throw new CairnError(
        'E_SERVICE_INVALID',
        `context.set: ${JSON.stringify(key)} is a name reserved by JavaScript objects; choose another key`,
        { key },
      );
    }
    this.values = { ...this.values, [key]: value };
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    writeFileAtomic(this.file, JSON.stringify(this.values, null, 2) + '\n');
  }

  all(): Record<string, string> {
    return { ...this.values };
  }

  remove(): void {
    fs.rmSync(this.file, { force: true });
    this.values = {};
  }
}
