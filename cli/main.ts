#!/usr/bin/env node
import { createProgram, reportError } from './program.js';

const { program } = createProgram(process.argv);
program.parseAsync(process.argv).catch((e: unknown) => {
  process.exitCode = reportError(e);
});
