/**
 * Which containers finished starting: pinged, and their postStartInit
 * succeeded. A label cannot change after a container is created, so the
 * fact lives in a file beside the context (`<ensemble>.inits.json`:
 * service → container id). A container not recorded there (an interrupted
 * first start, a ping timeout, a throwing init, Ctrl-C) gets its init again
 * on the next start or up; a replaced container has a new id, so its old
 * record never counts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';

/** The record file beside a context file (`X.context.json` → `X.inits.json`). */
export function initRecordFile(contextFile: string): string {
  return contextFile.replace(/\.context\.json$/, '') + '.inits.json';
}

export class InitRecord {
  private values: Record<string, string>;

  constructor(readonly file: string) {
    this.values = InitRecord.read(file);
  }

  static read(file: string): Record<string, string> {
    let raw: string;
    try {
      raw = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw e;
    }
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch {
      v = undefined;
    }
    if (
      typeof v !== 'object' ||
      v === null ||
      Array.isArray(v) ||
      Object.values(v).some((x) => typeof x !== 'string')
    ) {
      throw new CairnError('E_SERVICE_INVALID', `init record ${file} must hold a JSON object of strings`, { file });
    }
    // Rebuilt from entries: a "__proto__" key in the file stays a plain key.
    return Object.fromEntries(Object.entries(v as Record<string, string>));
  }

  /** Whether this container of the service finished its start (ping and postStartInit). */
  done(service: string, containerId: string): boolean {
    return Object.hasOwn(this.values, service) && this.values[service] === containerId;
  }

  /** Records the container as started; written at once (atomically), so a crash right after still counts it. */
  mark(service: string, containerId: string): void {
    this.write(Object.fromEntries([...Object.entries(this.values), [service, containerId]]));
  }

  /** Forgets a service (its container is being replaced or removed). */
  forget(service: string): void {
    if (!Object.hasOwn(this.values, service)) return;
    this.write(Object.fromEntries(Object.entries(this.values).filter(([k]) => k !== service)));
  }

  all(): Record<string, string> {
    return { ...this.values };
  }

  remove(): void {
    fs.rmSync(this.file, { force: true });
    this.values = {};
  }

  private write(values: Record<string, string>): void {
    this.values = values;
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    writeFileAtomic(this.file, JSON.stringify(values, null, 2) + '\n');
  }
}
