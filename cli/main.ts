#!/usr/bin/env node
import { createProgram } from './program.js';
import { reportError } from './report-error.js';

createProgram(process.argv)
  .then(({ program }) => program.parseAsync(process.argv))
  .catch((e: unknown) => {
    process.exitCode = reportError(e);
  });
