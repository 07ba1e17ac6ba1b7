/**
 * Makes a graph's derivations self-contained: the stage file's code object
 * (code-bundle.ts) enters the store, and every derivation of the graph is
 * stored pointing to it, so `cairn build-drv` can build any of them on a host
 * with only store objects. The DRefs are untouched (the pointer lies beside
 * drv.json).
 */
import { encodeCodeObject } from '../store/code-object.js';
import type { LocalStore } from '../store/store.js';
import { bundleStageFile } from './code-bundle.js';
import type { Graph } from './instantiate.js';

export interface SelfContained {
  /** The code object's name. */
  code: string;
  /** How many derivations point to it. */
  derivations: number;
  /** Milliseconds spent bundling (0 when the bundle cache had it) and storing. */
  ms: number;
}

/**
 * Stores `file`'s code object and points every derivation of `graph` at it
 * (file-input imports excepted: they copy the user's files, and travel as
 * their realizations). E_CODE_NATIVE (and other bundling errors) when the
 * code cannot travel.
 */
export async function storeStageCode(
  store: LocalStore,
  file: string,
  graph: Graph,
  opts: { realizeFollows?: boolean } = {},
): Promise<SelfContained> {
  const t0 = performance.now();
  // A cairn.yaml has no code of the user's: its code object records what loading it read (pipeline-code.ts).
  const text = /\.ya?ml$/i.test(file)
    ? encodeCodeObject((await import('./pipeline/pipeline-code.js')).pipelineCodeObject(file)).text
    : (await bundleStageFile(file)).text;
  const code = await store.addCode(text);
  const list = graph.order
    .map((d) => graph.nodes.get(d)!)
    .filter((n) => !n.imports)
    .map((n) => ({ dref: n.dref, name: n.name, drvJson: n.drvJson, code }));
  // Made durable with the realize that follows, not in a round of their own (see addDerivations).
  await store.addDerivations(list, { settle: !opts.realizeFollows });
  return { code, derivations: list.length, ms: performance.now() - t0 };
}
