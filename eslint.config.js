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
    rules: {
      // `Stage<any>` / `Step<any>` spell "a stage of any config" (`unknown` fails: build's config is contravariant);
      // any *use* of an any value is still caught by the no-unsafe-* rules.
      '@typescript-eslint/no-explicit-any': 'off',
      // Async functions without await implement Promise-returning interfaces (build, send), and `async` turns a
      // throw into a rejection, which is what their callers handle.
      '@typescript-eslint/require-await': 'off',
      // Its findings here are false: static Buffer.compare, methods saved to be restored (process.stdout.write,
      // Error.prepareStackTrace) or used as map keys, and BuildContext's exec, a closure that needs no `this`.
      '@typescript-eslint/unbound-method': 'off',
      // `_`-prefixed names and the siblings of a `...rest` exist to be left out.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
      // Module state set once after start-up (cli/serve/worker.ts) is read by functions declared above it.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // Control characters are what these patterns look for (terminal escapes, unprintable names).
      'no-control-regex': 'off',
      // An interface that extends one type names it, and reads better in errors than a type alias.
      '@typescript-eslint/no-empty-object-type': ['error', { allowInterfaces: 'with-single-extends' }],
      // A getter on an object literal has its own `this`: `self` is how it reaches the instance.
      '@typescript-eslint/no-this-alias': ['error', { allowedNames: ['self'] }],
      '@typescript-eslint/no-floating-promises': ['error', { allowForKnownSafeCalls: [nodeTestCalls] }],
      // From strictTypeChecked, the rules that find bugs or dead code at little cost (not the rest of it: e.g.
      // no-unnecessary-boolean-literal-compare would drop the `=== true` that checks what user code (a service's ping)
      // returns, which its type promises but nothing enforces; no-non-null-assertion fights noUncheckedIndexedAccess).
      '@typescript-eslint/no-deprecated': 'error',
      '@typescript-eslint/no-misused-spread': 'error',
      '@typescript-eslint/use-unknown-in-catch-callback-variable': 'error',
      '@typescript-eslint/no-unnecessary-template-expression': 'error',
      '@typescript-eslint/prefer-string-starts-ends-with': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      '@typescript-eslint/return-await': ['error', 'error-handling-correctness-only'],
    },
  },
  {
    files: ['**/*.ts', '**/*.js'],
    plugins: { '@stylistic': stylistic },
    rules: {
      // Lines stay within 120 columns, strings and templates too: Prettier (npm run format) breaks code and calls to
      // fit, and a long message, test name or embedded script is split into pieces joined with `+` (same text).
      '@stylistic/max-len': ['error', { code: 120, tabWidth: 2 }],
    },
  },
  {
    // The Store boundary (docs/design.md, "The Store interface"): outside src/store, nothing reaches the index, the
    // derivation files or the accessor of LocalStore's private parts. Tests may: they check the store from inside.
    files: ['src/**/*.ts', 'cli/**/*.ts', 'bench/**/*.ts', 'examples/**/*.ts'],
    ignores: ['src/store/**'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: '(^|/)store/(internals|index-db|drv-files|sqlite)\\.js$',
              message: 'store internals are private to src/store: use the Store interface or a src/store function',
            },
          ],
        },
      ],
    },
  },
  {
    // The code-identity fixtures hold redundant casts and `!` on purpose: the identity must ignore type-only syntax.
    files: ['test/fixtures/identity/**'],
    rules: { '@typescript-eslint/no-unnecessary-type-assertion': 'off' },
  },
  {
    // These tests build functions from text on purpose: code identity of functions with equal or different text.
    files: ['test/core-instantiate.test.ts'],
    rules: { '@typescript-eslint/no-implied-eval': 'off' },
  },
  {
    // The config files themselves are plain JavaScript outside the TypeScript program.
    files: ['**/*.js'],
    extends: [tseslint.configs.disableTypeChecked],
  },
);
