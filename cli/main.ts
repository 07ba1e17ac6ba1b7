#!/usr/bin/env node
import { createProgram } from './program.js';
import { reportError } from './report-error.js';

const { program } = createProgram(process.argv);
program.parseAsync(process.argv).catch((e: unknown) => {
  process.exitCode = reportError(e);
});
