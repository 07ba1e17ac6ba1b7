/**
 * A derivation as it travels to a builder: the export of its drv.json and
 * code object (store/drv-export.ts) that `cairn build-drv DREF --from -`
 * takes in on stdin, verifying each against its name, before building.
 */
import { PassThrough } from 'node:stream';
import type { DRef } from '../../store/refs.js';
import type { LocalStore } from '../../store/store.js';
import { exportDerivationsTo } from '../../store/drv-export.js';

export async function derivationBundle(store: LocalStore, dref: DRef): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const sink = new PassThrough();
  sink.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((resolve) => sink.on('end', resolve));
  await exportDerivationsTo(store, [dref], sink);
  sink.end();
  await ended;
  return Buffer.concat(chunks);
}
