import { displayPath } from '../src/store/fsutil.js';
import type { TreeEntry } from '../src/store/realization-files.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

const TYPE_LETTER: Record<TreeEntry['type'], string> = { directory: 'd', symlink: 'l', file: '-' };

function modeString(e: TreeEntry): string {
  const bits = 'rwxrwxrwx';
  let s = '';
  for (let i = 0; i < 9; i++) s += e.mode & (1 << (8 - i)) ? bits[i] : '-';
  return TYPE_LETTER[e.type] + s;
}

/**
 * `ls -lR`-like lines for a realization's output (see outputTree), paths
 * relative to it. A name that is not valid UTF-8 is listed too, its other
 * bytes shown as \xNN (see displayPath).
 */
export function formatTree(entries: readonly TreeEntry[]): string[] {
  return entries.map((e) => {
    const tail = e.target !== null ? ` -> ${displayPath(e.target)}` : e.type === 'directory' ? '/' : '';
    const size = String(e.type === 'directory' ? '-' : e.size).padStart(10);
    return `${modeString(e)} ${size}  ${displayPath(e.path)}${tail}`;
  });
}
