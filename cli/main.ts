#!/usr/bin/env node
import { createProgram } from './program.js';
import { reportError } from './report-error.js';

// `cairn … | head`: once the reader is gone, the rest of the output has nowhere to go. Exit as a
// SIGPIPE'd program would (128 + 13), without a stack trace, unless a command handles it itself
// (a follow loop stops its docker processes first).
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code !== 'EPIPE' || process.stdout.listenerCount('error') > 1) return;
  process.exit(141);
});

createProgram(process.argv)
  .then(({ program }) => program.parseAsync(process.argv))
  .catch((e: unknown) => {
    process.exitCode = reportError(e);
  });
