import { defineConfig } from 'tsup';

// One build, two module systems: the library as CJS (require) and ESM (import), both with types,
// and the CLI as a CJS executable.
export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['cjs', 'esm'],
    dts: true,
    sourcemap: true,
    clean: true,
    target: 'node20',
    shims: true,
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
