import * as fs from 'node:fs';
import { displayPath, joinPath } from '../src/store/fsutil.js';

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

/**
 * `ls -lR`-like lines for a realization's output, paths relative to it,
 * sorted by bytes. Names are read as bytes, so a name that is not valid
 * UTF-8 is listed too, its other bytes shown as \xNN (see displayPath).
 */
export function listTree(root: string): string[] {
  const lines: string[] = [];
  const walk = (dir: Buffer, rel: Buffer | null): void => {
    for (const name of fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare)) {
      const abs = joinPath(dir, name);
      const r = rel === null ? name : joinPath(rel, name);
      const st = fs.lstatSync(abs);
      const link = st.isSymbolicLink() ? fs.readlinkSync(abs, { encoding: 'buffer' }) : null;
      const tail = link !== null ? ` -> ${displayPath(link)}` : st.isDirectory() ? '/' : '';
      const size = String(st.isDirectory() ? '-' : st.size).padStart(10);
      lines.push(`${modeString(st)} ${size}  ${displayPath(r)}${tail}`);
      if (st.isDirectory()) walk(abs, r);
    }
  };
  walk(Buffer.from(root), null);
  return lines;
}
