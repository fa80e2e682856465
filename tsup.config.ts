import { defineConfig } from 'tsup';

// The library as one CommonJS build with types, which `require` loads and `import` too (Node reads
// its export names: esbuild annotates them for cjs-module-lexer), so that a program whose parts use
// both gets one copy of each class (a second, ESM build made a Tensor from `import` foreign to a router
// from `require`, and `instanceof RouterError` false across them); and the CLI as a CJS executable.
export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['cjs'],
    dts: true,
    sourcemap: true,
    clean: true,
    target: 'node20',
  },
  {
    entry: { cli: 'src/cli.ts' },
    format: ['cjs'],
    sourcemap: true,
    target: 'node20',
    banner: { js: '#!/usr/bin/env node' },
  },
  {
    // `npm run bench:anchors` (bench/anchors.ts). Not part of the package: package.json "files" leaves it out.
    entry: { 'bench-anchors': 'bench/anchors.ts' },
    format: ['cjs'],
    sourcemap: true,
    target: 'node20',
    external: ['onnxruntime-node'],
  },
]);
