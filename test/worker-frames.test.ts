/**
 * The builder worker's framing (src/stages/builders/worker-frames.ts) and
 * its stream reader (worker-channel.ts): round trips split at every byte,
 * and hostile frames (huge lengths, truncation, bad JSON, unknown types,
 * payloads where none belongs, malformed refs, another version) refused
 * with stable codes, with nothing of a refused payload left on disk.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { after, describe, it } from 'node:test';
import { tempDir } from './helpers.js';
import {
  checkVersion,
  encodeFrame,
  FrameDecoder,
  MAX_HEADER_BYTES,
  parseReply,
  parseRequest,
  WORKER_PROTOCOL_VERSION,
  type FrameEvent,
} from '../src/stages/builders/worker-frames.js';
import { discard, FrameChannel } from '../src/stages/builders/worker-channel.js';
import type { WorkerReply, WorkerRequest } from '../src/stages/builders/worker-frames.js';

const work = tempDir('cairn-worker-frames');
after(() => work.cleanup());

const H = '0123456789abcdfghijklmnpqrsvwxyz';
const DREF = `${H}-part-0`;
const RREF = `${H}-${DREF}`;

/** A raw prefix: header length, payload length. */
function prefix(h: number, p: bigint): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32BE(h, 0);
  b.writeBigUInt64BE(p, 4);
  return b;
}

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
  return 'no error';
}

describe('worker frames', () => {
  it('round-trips frames with and without payloads, split at every byte', () => {
    const payload = Buffer.from('x'.repeat(300));
    const stream = Buffer.concat([
      encodeFrame({ t: 'hello', version: WORKER_PROTOCOL_VERSION }),
      encodeFrame({ t: 'build', dref: DREF, inputs: [RREF] }, payload.length),
      payload,
      encodeFrame({ t: 'have', refs: [DREF, RREF] }),
    ]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = new FrameDecoder();
      const evs: FrameEvent[] = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
      d.finish();
      const headers = evs.filter((e) => e.kind === 'header');
      assert.deepEqual(
        headers.map((e) => parseRequest(e.header, e.payloadBytes)),
        [
          { t: 'hello', version: WORKER_PROTOCOL_VERSION },
          { t: 'build', dref: DREF, inputs: [RREF] },
          { t: 'have', refs: [DREF, RREF] },
        ],
      );
      const body = Buffer.concat(evs.flatMap((e) => (e.kind === 'payload' ? [e.chunk] : [])));
      assert.deepEqual(body, payload, `cut at ${cut}`);
      assert.equal(evs.filter((e) => e.kind === 'end').length, 3);
    }
  });

  it('refuses a huge or empty header length and a huge payload length at once (E_WORKER_PROTOCOL)', () => {
    assert.equal(
      code(() => new FrameDecoder().push(prefix(MAX_HEADER_BYTES + 1, 0n))),
      'E_WORKER_PROTOCOL',
    );
    assert.equal(
      code(() => new FrameDecoder().push(prefix(0xffffffff, 0n))),
      'E_WORKER_PROTOCOL',
    );
    assert.equal(
      code(() => new FrameDecoder().push(prefix(0, 0n))),
      'E_WORKER_PROTOCOL',
    );
    assert.equal(
      code(() => new FrameDecoder().push(prefix(2, 0xffffffffffffffffn))),
      'E_WORKER_PROTOCOL',
    );
  });

  it('a truncated frame, bad JSON or a non-object header is E_WORKER_PROTOCOL, and the decoder stays failed', () => {
    const d = new FrameDecoder();
    d.push(encodeFrame({ t: 'closure' }, 100));
    d.push(Buffer.alloc(10));
    assert.equal(
      code(() => d.finish()),
      'E_WORKER_PROTOCOL',
    );
    assert.equal(
      code(() => d.push(Buffer.alloc(90))),
      'E_WORKER_PROTOCOL',
    );
    const half = new FrameDecoder();
    half.push(encodeFrame({ t: 'hello', version: 1 }).subarray(0, 14));
    assert.equal(
      code(() => half.finish()),
      'E_WORKER_PROTOCOL',
    );
    const json = Buffer.from('{"t":');
    assert.equal(
      code(() => new FrameDecoder().push(Buffer.concat([prefix(json.length, 0n), json]))),
      'E_WORKER_PROTOCOL',
    );
    assert.equal(
      code(() => parseRequest([1, 2], 0)),
      'E_WORKER_PROTOCOL',
    );
    assert.equal(
      code(() => parseReply('hello', 0)),
      'E_WORKER_PROTOCOL',
    );
  });

  it('checks every message against its type: unknown types, payloads, refs, versions', () => {
    const bad: [unknown, number][] = [
      [{ t: 'rm-rf' }, 0],
      [{ t: '__proto__' }, 0],
      [{ t: 'hello' }, 0],
      [{ t: 'hello', version: '1' }, 0],
      [{ t: 'hello', version: 1 }, 5],
      [{ t: 'closure' }, 0],
      [{ t: 'build', dref: DREF, inputs: [] }, 0],
      [{ t: 'build', dref: RREF, inputs: [] }, 10],
      [{ t: 'build', dref: '../../etc', inputs: [] }, 10],
      [{ t: 'build', dref: DREF, inputs: [DREF] }, 10],
      [{ t: 'build', dref: DREF, inputs: 'x' }, 10],
      [{ t: 'build', dref: DREF, inputs: [], force: 'yes' }, 10],
      [{ t: 'have', refs: ['/etc/passwd'] }, 0],
      [{ t: 'have', refs: [1] }, 0],
      [{ t: 'built', report: {} }, 0],
    ];
    for (const [h, n] of bad)
      assert.equal(
        code(() => parseRequest(h, n)),
        'E_WORKER_PROTOCOL',
        JSON.stringify(h),
      );
    for (const [h, n] of [
      [{ t: 'built', report: {} }, 0],
      [{ t: 'error', message: 'x' }, 0],
      [{ t: 'log', line: 'x' }, 3],
      [{ t: 'build', dref: DREF, inputs: [] }, 10],
    ] as [unknown, number][])
      assert.equal(
        code(() => parseReply(h, n)),
        'E_WORKER_PROTOCOL',
        JSON.stringify(h),
      );
    assert.deepEqual(parseReply({ t: 'log', line: 'y'.repeat(100_000) }, 0), { t: 'log', line: 'y'.repeat(65536) });
    assert.equal(
      code(() => checkVersion(WORKER_PROTOCOL_VERSION + 1, 'the other side')),
      'E_WORKER_VERSION',
    );
    checkVersion(WORKER_PROTOCOL_VERSION, 'the other side');
  });
});

describe('worker channel', () => {
  let seq = 0;
  const payloadRoot = path.join(work.dir, 'payloads');
  fs.mkdirSync(payloadRoot);
  const newDir = (): string => {
    const d = path.join(payloadRoot, `p${++seq}`);
    fs.mkdirSync(d);
    return d;
  };
  const open = (): { input: PassThrough; ch: FrameChannel<WorkerRequest, WorkerReply>; sent: Buffer[] } => {
    const input = new PassThrough();
    const sent: Buffer[] = [];
    const ch = new FrameChannel<WorkerRequest, WorkerReply>(
      input,
      async (b) => {
        sent.push(Buffer.from(b));
      },
      parseRequest,
      newDir,
    );
    return { input, ch, sent };
  };

  it('writes a payload to a file of its own and hands it over whole', async () => {
    const { input, ch } = open();
    const body = Buffer.from('tar bytes '.repeat(1000));
    input.write(encodeFrame({ t: 'closure' }, body.length));
    input.write(body.subarray(0, 7));
    input.end(body.subarray(7));
    const f = await ch.read();
    assert.equal(f?.msg.t, 'closure');
    const payload = f?.payload;
    assert.ok(payload);
    assert.deepEqual(fs.readFileSync(payload.file), body);
    discard(f);
    assert.equal(fs.existsSync(payload.dir), false);
    assert.equal(await ch.read(), null);
  });

  it('a truncated payload: E_WORKER_PROTOCOL and its partial file removed', async () => {
    const { input, ch } = open();
    input.write(encodeFrame({ t: 'closure' }, 1000));
    input.end(Buffer.alloc(10));
    await assert.rejects(ch.read(), { code: 'E_WORKER_PROTOCOL' });
    assert.deepEqual(fs.readdirSync(payloadRoot), []);
  });

  it('a payload on a message that takes none, or a huge length: refused before any file is made', async () => {
    for (const bytes of [
      Buffer.concat([encodeFrame({ t: 'hello', version: 1 }, 50), Buffer.alloc(50)]),
      prefix(8, 2n ** 60n),
      Buffer.concat([encodeFrame({ t: 'closure' }, 3), Buffer.alloc(3), Buffer.from('garbage after it')]),
    ]) {
      const { input, ch } = open();
      input.end(bytes);
      // The third stream's first frame is good: taken, then the garbage fails.
      const first = await ch.read().catch((e: unknown) => (e as { code: string }).code);
      if (typeof first !== 'string') {
        discard(first);
        await assert.rejects(ch.read(), { code: 'E_WORKER_PROTOCOL' });
      } else assert.equal(first, 'E_WORKER_PROTOCOL');
      assert.deepEqual(fs.readdirSync(payloadRoot), []);
    }
  });

  it('sends a frame and its payload file in order', async () => {
    const { ch, sent } = open();
    const file = path.join(work.dir, 'out.tar');
    fs.writeFileSync(file, 'payload!');
    await Promise.all([ch.send({ t: 'log', line: 'a' }), ch.send({ t: 'built', report: {} }, file)]);
    const d = new FrameDecoder();
    const evs = d.push(Buffer.concat(sent));
    d.finish();
    assert.deepEqual(
      evs.filter((e) => e.kind === 'header').map((e) => parseReply(e.header, e.payloadBytes).t),
      ['log', 'built'],
    );
    assert.equal(Buffer.concat(evs.flatMap((e) => (e.kind === 'payload' ? [e.chunk] : []))).toString(), 'payload!');
  });
});
