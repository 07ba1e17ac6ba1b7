// @ts-check
// Lint for Cairn: typescript-eslint's type-checked rules over every TypeScript file that tsconfig.check.json
// type-checks, plus a few stricter rules that catch real bugs, plus the 120-column limit. Run: npm run lint.
import eslint from '@eslint/js';
import tseslint from 'typescript-eslint';
import stylistic from '@stylistic/eslint-plugin';

/** node:test's describe/it/test return promises that the runner itself awaits: not floating. */
const nodeTestCalls = {
  from: /** @type {const} */ ('package'),
  package: 'node:test',
  name: ['describe', 'it', 'test', 'suite', 'before', 'after', 'beforeEach', 'afterEach'],
};

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'scratch/', '.cairn-test-*/', '.cairn-services/', 'cli/client/'] },
  eslint.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    files: ['**/*.ts'],
    languageOptions: {
      // One program for src, cli, test, bench and examples (what `npm run typecheck` checks): faster than
      // projectService here, and the same compiler options as the type check.
      parserOptions: { project: './tsconfig.check.json', tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@stylistic': stylistic },
    rules: {
      // DRef and RRef are both `string` today, so `RRef | DRef` looks redundant; the union documents intent and
      // becomes meaningful once they are branded (issue 15, item 2).
      '@typescript-eslint/no-duplicate-type-constituents': 'off',
      '@typescript-eslint/no-floating-promises': ['error', { allowForKnownSafeCalls: [nodeTestCalls] }],
      // From strictTypeChecked, the rules that find bugs or dead code at little cost:
      '@typescript-eslint/no-deprecated': 'error',
      '@typescript-eslint/no-misused-spread': 'error',
      '@typescript-eslint/use-unknown-in-catch-callback-variable': 'error',
      '@typescript-eslint/no-unnecessary-template-expression': 'error',
      '@typescript-eslint/no-unnecessary-boolean-literal-compare': 'error',
      '@typescript-eslint/prefer-string-starts-ends-with': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      '@typescript-eslint/return-await': ['error', 'error-handling-correctness-only'],
      '@typescript-eslint/prefer-promise-reject-errors': 'error',
    },
  },
  {
    // The code-identity fixtures hold redundant casts and `!` on purpose: the identity must ignore type-only syntax.
    files: ['test/fixtures/identity/**'],
    rules: { '@typescript-eslint/no-unnecessary-type-assertion': 'off' },
  },
  {
    // The config files themselves are plain JavaScript outside the TypeScript program.
    files: ['**/*.js'],
    extends: [tseslint.configs.disableTypeChecked],
  },
);
