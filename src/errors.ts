/**
 * Every error Cairn raises on purpose carries a stable `code`, so scripts can
 * branch on it and the CLI can print it and exit non-zero. Messages may change
 * between versions; codes may not.
 */
export const ErrorCodes = {
  E_CONFIG_NOT_JSON:
    'config holds a value that is not JSON (function, BigInt, NaN, Infinity, symbol, class instance, cycle)',
  E_CONFIG_TOO_DEEP: 'config (or other hashed JSON) nests objects and arrays deeper than 1000 levels',
  E_BAD_NAME: 'stage name is not allowed',
  E_CYCLE: 'stage graph has a cycle',
  E_NOT_A_STAGE: 'a value used as a stage is not one',
  E_DUPLICATE_OUTPUT: 'promised output listed twice or outside the output directory',
  E_STAGE_FILE: 'stage file could not be loaded',
  E_BAD_PIPELINE:
    'a pipeline file (cairn.yaml) is not valid: unknown key, wrong ' +
    'type, missing cmd, cycle, overlapping outs, unknown dep',
  E_NO_TARGET: 'stage file exports no stage to realize',
  E_BUILD_FAILED: 'a build function threw or exited with an error',
  E_INTERRUPTED: 'cairn received SIGINT, SIGTERM or SIGHUP: builds were stopped and nothing more is stored',
  E_PROMISE_BROKEN: 'a build did not create a promised output',
  E_UNSAFE_OUTPUT: 'an output holds a symlink that escapes it, a device, a socket or a fifo',
  E_INPUT_MISSING: 'a file input of a stage does not exist or cannot be read',
  E_INPUT_CHANGED: 'a file input changed between being hashed and being copied into the store for the build',
  E_UNSAFE_INPUT: 'a file input holds a symlink that leaves it, a device, a socket or a fifo',
  E_NO_SUCH_STAGE: 'a stage named on the command line (realize --break) is not in the graph, or its name is ambiguous',
  E_BREAK_CANCELLED:
    'a build stopped at a break point (realize --break) was cancelled: nothing of the stage was stored',
  E_MATCH_UNSATISFIED: 'matcher still selects nothing after building',
  E_MATCH_AMBIGUOUS: 'matcher `only` found more than one realization',
  E_MATCH_INVALID: 'matcher returned something that is not a list of candidate RRefs',
  E_BAD_REF: 'reference is not a well-formed DRef or RRef',
  E_NO_SUCH_REF: 'reference is not in the store',
  E_NO_SUCH_PATH: 'path does not exist inside the realization',
  E_STORE_VERSION: 'store was written by an incompatible layout version',
  E_STORE_IO: 'store could not be read or written',
  E_STORE_UNSAFE: 'the store root or a key entry of it is owned by another user or writable by group or others',
  E_MOUNT_IN_TREE: 'a tree being removed or measured holds a mount point, which is never entered',
  E_BAD_ADD:
    'Store.add got a derivation that does not hash to its DRef, a ' +
    'context naming realizations the store lacks, or no outputs',
  E_LOCK_TIMEOUT: 'gave up waiting for a lock',
  E_USAGE: 'the cairn command line is not valid (raised by the CLI only, never by the library)',
  E_BAD_STAGE_SPEC: 'a stage() or built-in stage spec has an option of the wrong type, out of range or missing',
  E_BAD_ARGUMENT: 'a library function got an argument or option it does not accept (wrong type, out of range, missing)',
  E_BAD_ENV: 'a CAIRN_* environment variable has a value it does not accept',
  E_UNSUPPORTED_RUNTIME: 'this Node.js cannot do what was asked; the message names the way that works',
  E_NO_SUCH_FILE: 'a file named by the caller (e.g. an archive to import) does not exist',
  E_REF_IN_USE: 'a realization or derivation is still used by others (in their context, or by its realizations)',
  E_OUT_LINK_NOT_SYMLINK: 'an out-link path exists and is not a symlink, so it is not replaced',
  E_DOCKER: 'the Docker engine is unreachable, or a docker command failed',
  E_IMAGE_INVALID: 'a container image realization or its image changes are not valid',
  E_SERVICE_INVALID: 'a service ensemble is not valid (names, images, dependencies, cycles, exclusions)',
  E_SERVICE_FAILED: 'a service, or a dependency of it, failed to start',
  E_PING_TIMEOUT: 'a service did not answer its ping within the timeout',
  E_SERVICE_NOT_RUNNING: 'a command needs the running container of a service (exec), and it is not running',
  E_PROJECT_IN_USE: 'a services project name is taken by another ensemble, or by another copy of the ensemble file',
  E_HASH_MISMATCH: 'fetched or copied content does not have the declared hash',
  E_BAD_HASH: 'a declared hash is malformed or of an unknown type',
  E_FETCH_FAILED: 'a download failed on every URL within its retry budget',
  E_UNSAFE_ARCHIVE:
    'an archive holds an absolute or .. path, an escaping link, a ' +
    'write through a link, a duplicate name or a device file',
  E_BAD_ARCHIVE: 'an archive is damaged or of an unsupported format',
  E_ARCHIVE_TOO_LARGE: 'an archive holds more entries or unpacks to more bytes than its unpack limits allow',
  E_BAD_CATALOG: 'an image catalog is not valid',
  E_NO_SUCH_ACTION: 'a catalog declares and exports no action of this name',
  E_ACTION_FAILED: 'a catalog action threw or returned something that is not an exit status',
  E_BAD_REMOTE: 'a remote is not of the form [user@]host:STORE',
  E_BAD_COMMAND: 'a command given as one string (the ssh command of a sync) is empty or has unbalanced quotes',
  E_BAD_SYNC_KEY: 'a sync key is not 32 lowercase letters and digits',
  E_SYNC_FAILED: 'ssh, rsync or the remote cairn failed during a sync',
  E_SYNC_HASH_MISMATCH:
    'a realization or derivation received by sync or import does not match its hash, and was refused',
  E_SUBSTITUTE: 'a substituter did not answer in time or did not deliver what it offered; realize went on without it',
  E_BAD_CLOSURE: 'a received closure is malformed or incomplete (a dependency is neither sent nor present)',
  E_MACHINE_INCOMPATIBLE: 'a saved machine state cannot be resumed by this QEMU or backend',
  E_MACHINE_STATE: 'a realization is not a machine state, or its machine.json is damaged',
  E_MACHINE_EXEC: 'a command in a machine exited non-zero where success was required',
  E_MACHINE_TIMEOUT: 'a machine did not answer in time',
  E_MACHINE_TRANSFER:
    'an upload or download failed in the machine (no such path there, a full disk) or the machine has no share',
  E_MACHINE_UNREACHABLE: 'an ssh machine could not be reached (no route, refused, timed out, unknown host name)',
  E_MACHINE_HOST_KEY:
    "an ssh machine's host key is unknown, changed, or not the one its state recorded; nothing was run on it",
  E_MACHINE_AUTH: 'an ssh machine refused the login (no key or agent it accepts; BatchMode never asks for a password)',
  E_MACHINE_FORWARD: 'a port forward to a machine could not be set up (its host port is taken)',
  E_MACHINE_RESTORE: 'QEMU refused to restore a saved machine state (its memory snapshot did not load)',
  E_UNKNOWN_BASE: 'no machine base has this name',
  E_UNKNOWN_STEP: 'no built-in or user step has this name',
  E_STEP_ARGS: 'a machine step got arguments it does not accept',
  E_SERVER_SOCKET: "the server's socket directory is not private to its user",
  E_SERVER_RUNNING: 'a cairn server already listens on the socket',
  E_SERVER_START: 'the cairn server did not start',
  E_SERVER_LOST: 'the cairn server closed the connection before the command finished',
  E_SERVER_PROTOCOL: 'a client sent the cairn server a request it cannot read',
  E_BAD_CACHE_URL: 'a binary cache URL is malformed, of an unknown scheme, or has an unknown or repeated parameter',
  E_CACHE_UNAVAILABLE:
    'a binary cache did not answer within its retry budget (unreachable, timeouts, 5xx, SlowDown) or refused a request',
  E_CACHE_READ_ONLY: 'a write or delete was sent to a read-only binary cache (http(s)://)',
  E_CACHE_NO_LIST: 'an http(s):// binary cache cannot enumerate its keys; ls, verify and gc need s3:// or file://',
  E_CACHE_FORMAT: 'a binary cache has no cache-info object, or one of a format or compression this cairn does not read',
  E_CACHE_BAD_ENTRY: 'a binary cache object (metadata, derivation) is malformed or does not match its key',
  E_CACHE_UNSIGNED: 'a binary cache entry carries no signature, and was not used',
  E_CACHE_UNTRUSTED: 'a binary cache entry is signed only by keys that are not trusted, and was not used',
  E_CACHE_BAD_SIGNATURE: 'a signature of a binary cache entry by a trusted key does not verify (tampered); not used',
  E_CACHE_MISSING: 'a reference or one of its dependencies is not in the binary cache, or its archive is missing',
  E_BAD_KEY: 'a signing key or public key file is malformed, or a key file to be written exists already',
  E_NOT_IN_CLOSURE: 'a why-query names a reference that is not in the closure of the targets (not used by them)',
  E_GRAPHVIZ_MISSING: "Graphviz's dot program, which draws SVG graphs, is not installed (apt install graphviz)",
  E_GRAPHVIZ_FAILED: "Graphviz's dot program failed to draw a graph",
  E_STORE_CONFIG: "the store's config.json is not valid JSON or has a field of the wrong type",
  E_BAD_BUILDER: 'a builder spec is not local, ssh://[user@]host[:port][/STORE][?maxJobs=N] or slurm[:PARTITION]',
  E_BUILDER_FAILED: 'a remote builder (ssh host or Slurm job) failed or returned something unusable',
  E_WORKER_PROTOCOL: 'a builder worker stream is malformed: a bad frame length, header or message, or truncated',
  E_WORKER_VERSION: 'a builder worker and its coordinator speak different protocol versions (install the same Cairn)',
  E_CODE_CORRUPT: 'a stage code object is malformed, too large, or does not hash to its name',
  E_CODE_NATIVE:
    'a stage file imports a native addon (a .node file or a package built with node-gyp): it cannot travel',
  E_CODE_NOT_PORTABLE:
    'stage code reads a file of the checkout that did not travel, or imports a local module outside its bundle',
  E_NO_CODE: 'a derivation has no code object in the store (realize it with self-contained code first)',
  E_CODE_MISMATCH: "a derivation's code object, loaded again, does not define that derivation (same DRef)",
  E_BUILD_INPUT:
    'an input realization given to build a derivation is missing, ambiguous or not one of its dependencies',
  E_BAD_DRV_EXPORT:
    'a derivation export is malformed: a drv.json or code object does not match its name, or a hostile tree',
  E_UI_LISTEN: '`cairn ui` could not listen on the host and port asked for (taken, or not an address of this machine)',
  E_UI_ASSETS: "the web view's own files, or the preact/htm modules it serves, are missing or not as expected",
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

const BRAND = Symbol.for('cairn.error');

export class CairnError extends Error {
  /**
   * `instanceof` by brand, not by class identity: code loaded on first use
   * with require() (see fileInputs in stages/instantiate.ts) can get its own
   * copy of this module under a transpiler's require hook, and its errors
   * must still be recognised, codes and all.
   */
  static override [Symbol.hasInstance](x: unknown): boolean {
    return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[BRAND] === true;
  }

  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;
  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    Object.defineProperty(this, BRAND, { value: true });
    this.name = 'CairnError';
    this.code = code;
    this.details = details;
  }
}

export function isCairnError(e: unknown, code?: ErrorCode): e is CairnError {
  return e instanceof CairnError && (code === undefined || e.code === code);
}
