/**
 * Context interpolation and spec hashing: pure functions of their inputs.
 */
import { createHash } from 'node:crypto';
import { CairnError } from '../errors.js';
import { canonicalJson } from '../store/canonical.js';

const PLACEHOLDER = /\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.-]*)\}/g;

/**
 * Context keys that name a member of Object.prototype (`constructor`,
 * `__proto__`, `toString`, `hasOwnProperty`, ...). A plain lookup of them
 * finds the prototype's function instead of a value, in Cairn and in any
 * other tool that reads the context file, so they are refused outright.
 */
export function isReservedContextKey(key: string): boolean {
  return Reflect.has(Object.prototype, key);
}

const reserved = (key: string, where: string): CairnError =>
  new CairnError(
    'E_SERVICE_INVALID',
    `${where} uses {${key}}, a name reserved by JavaScript objects; choose another context key`,
    { key },
  );

/** The `{key}` placeholders of a template (not `{{`/`}}`), for checking before anything starts. */
export function placeholders(template: string): string[] {
  return [...template.matchAll(PLACEHOLDER)].flatMap((m) => (m[1] === undefined ? [] : [m[1]]));
}

/** E_SERVICE_INVALID if a template uses a reserved key (see isReservedContextKey). */
export function checkTemplate(template: string, where: string): void {
  for (const key of placeholders(template)) if (isReservedContextKey(key)) throw reserved(key, where);
}

/**
 * Replaces `{key}` with the context value `key`; `{{` and `}}` stand for
 * literal braces. A key the context does not (yet) hold is an error naming
 * the service, rather than an empty string the service would misread. Only
 * the context's own properties count: `{constructor}` is refused, never the
 * text of Object's constructor.
 */
export function interpolate(template: string, context: Readonly<Record<string, string>>, where = 'value'): string {
  return template.replace(PLACEHOLDER, (m, key: string | undefined) => {
    if (m === '{{') return '{';
    if (m === '}}') return '}';
    if (isReservedContextKey(key!)) throw reserved(key!, where);
    const v = Object.hasOwn(context, key!) ? context[key!] : undefined;
    if (typeof v !== 'string') {
      throw new CairnError(
        'E_SERVICE_FAILED',
        `${where} uses {${key}}, which the context does not hold (set it in a dependency's postStartInit)`,
        { key },
      );
    }
    return v;
  });
}

export function interpolateEnv(
  env: Readonly<Record<string, string>> | undefined,
  context: Readonly<Record<string, string>>,
  service: string,
): Record<string, string> {
  // Built from entries (define, not assign), so no key can reach a prototype setter.
  return Object.fromEntries(
    Object.keys(env ?? {})
      .sort()
      .map((k) => [k, interpolate(env![k]!, context, `service ${service}: env ${k}`)]),
  );
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
  /** Only when the service has volumes, so containers made before volumes existed keep their hash. */
  mounts?: readonly { kind: string; source: string; target: string; readOnly: boolean }[];
}

/** Short hash of the canonical spec; kept in a container label and compared on start. */
export function specHash(spec: ContainerSpec): string {
  return createHash('sha256').update(canonicalJson(spec)).digest('hex').slice(0, 32);
}
