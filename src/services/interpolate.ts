/**
 * Context interpolation and spec hashing: pure functions of their inputs.
 */
import { createHash } from 'node:crypto';
import { CairnError } from '../errors.js';
import { canonicalJson } from '../store/canonical.js';

/**
 * Replaces `{key}` with the context value `key`; `{{` and `}}` stand for
 * literal braces. A key the context does not (yet) hold is an error naming
 * the service, rather than an empty string the service would misread.
 */
export function interpolate(template: string, context: Readonly<Record<string, string>>, where = 'value'): string {
  return template.replace(/\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.-]*)\}/g, (m, key: string | undefined) => {
    if (m === '{{') return '{';
    if (m === '}}') return '}';
    const v = context[key!];
    if (v === undefined) throw new CairnError('E_SERVICE_FAILED', `${where} uses {${key}}, which the context does not hold (set it in a dependency's postStartInit)`, { key });
    return v;
  });
}

export function interpolateEnv(env: Readonly<Record<string, string>> | undefined, context: Readonly<Record<string, string>>, service: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(env ?? {}).sort()) out[k] = interpolate(env![k]!, context, `service ${service}: env ${k}`);
  return out;
}

/** Everything that, when it changes, means an existing container no longer matches its definition. */
export interface ContainerSpec {
  imageId: string;
  command: readonly string[] | null;
  env: Record<string, string>;
  ports: Record<string, number>;
  stopSignal: string | null;
  network: string;
  hostname: string;
}

/** Short hash of the canonical spec; kept in a container label and compared on start. */
export function specHash(spec: ContainerSpec): string {
  return createHash('sha256').update(canonicalJson(spec)).digest('hex').slice(0, 32);
}
