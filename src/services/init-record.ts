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
import { readStringMap, writeStringMap } from './string-map-file.js';

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
    return readStringMap(file, 'init record');
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
    writeStringMap(this.file, values);
  }
}
