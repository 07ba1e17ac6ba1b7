/**
 * The ensemble's global context, persisted as JSON so a restart or reload
 * sees the values a postStartInit set earlier (string-map-file.ts: written
 * atomically on every set).
 */
import * as fs from 'node:fs';
import { CairnError } from '../errors.js';
import { readStringMap, writeStringMap } from './string-map-file.js';
import { isReservedContextKey } from './interpolate.js';
import type { ServiceContext } from './spec.js';

export class FileContext implements ServiceContext {
  private values: Record<string, string>;

  constructor(readonly file: string) {
    this.values = FileContext.read(file);
  }

  static read(file: string): Record<string, string> {
    return readStringMap(file, 'context file');
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
    writeStringMap(this.file, this.values);
  }

  all(): Record<string, string> {
    return { ...this.values };
  }

  remove(): void {
    fs.rmSync(this.file, { force: true });
    this.values = {};
  }
}
