import * as fs from 'node:fs';
import * as path from 'node:path';

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
