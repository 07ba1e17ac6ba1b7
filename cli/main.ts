#!/usr/bin/env node
import { exitQuietlyWhenStdoutCloses } from './closed-stdout.js';
import { createProgram } from './program.js';
import { reportError } from './report-error.js';

exitQuietlyWhenStdoutCloses();
createProgram(process.argv)
  .then(({ program }) => program.parseAsync(process.argv))
  .catch((e: unknown) => {
    process.exitCode = reportError(e);
  });
