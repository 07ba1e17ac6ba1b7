import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../src/errors.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function modeString(st: fs.Stats): string {
  const t = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : '-';
  const bits = 'rwxrwxrwx';
  let s = '';
  for (let i = 0; i < 9; i++) s += st.mode & (1 << (8 - i)) ? bits[i] : '-';
  return t + s;
}

/** `ls -lR`-like lines for a realization's output, paths relative to it, sorted. */
export function listTree(root: string): string[] {
  const lines: string[] = [];
  const walk = (dir: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const abs = path.join(dir, name);
      const st = fs.lstatSync(abs);
      const rel = path.relative(root, abs);
      const tail = st.isSymbolicLink() ? ` -> ${fs.readlinkSync(abs)}` : st.isDirectory() ? '/' : '';
      lines.push(`${modeString(st)} ${String(st.isDirectory() ? '-' : st.size).padStart(10)}  ${rel}${tail}`);
      if (st.isDirectory()) walk(abs);
    }
  };
  walk(root);
  return lines;
}

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `30d`, `12h`, `90m`, `45s`, `2w` (or combinations like `1d12h`) to milliseconds. */
export function parseDuration(text: string): number {
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)([smhdw])/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) {
    throw new CairnError('E_USAGE', `${JSON.stringify(text)} is not a duration; use e.g. 30d, 12h, 90m, 45s, 2w`);
  }
  return parts.reduce((ms, p) => ms + Number(p[1]) * UNITS[p[2]!]!, 0);
}
