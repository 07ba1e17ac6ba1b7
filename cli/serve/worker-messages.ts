/**
 * Messages between the supervisor and a worker (over the IPC channel). A
 * module of their own: the supervisor forks the worker by path and must not
 * import it (the worker imports the whole command tree).
 */
import type { ClientRequest } from './protocol.js';

export type ToWorker = { type: 'run'; request: ClientRequest; marker: string } | { type: 'exit' };
/** `tainted` names what a command left behind that a new process would not have (the worker is then replaced). */
export type FromWorker = { type: 'ready' } | { type: 'done'; code: number; heapUsed: number; tainted?: string };
