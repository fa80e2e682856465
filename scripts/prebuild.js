#!/usr/bin/env node
// npm run build:prebuilt [-- --cpu-only]: builds the engine as it is published (with CUDA for every
// supported GPU when nvcc is present) into build-prebuild/, and stages it as
// prebuilds/<platform>-<arch>/node.napi[.<libc>].node, the name node-gyp-build picks. `npm pack` and
// `npm publish` then carry it, and an install on a machine where it loads compiles nothing
// (scripts/install.js; elsewhere the install compiles from the sources as before). `--binary FILE`
// stages an existing build instead of building.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

// The file name node-gyp-build matches on this platform: a Node-API binary, and on Linux the C
// library it was linked against (a glibc build does not load on musl, nor the reverse).
function prebuildPath(packageRoot) {
  let name = 'node.napi';
  if (process.platform === 'linux') {
    const glibc = process.report.getReport().header.glibcVersionRuntime;
    name += glibc ? '.glibc' : '.musl';
  }
  return path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, `${name}.node`);
}

// Copies `binary` into packageRoot's prebuilds/ and returns where it went.
function stage(binary, packageRoot) {
  const target = prebuildPath(packageRoot);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.copyFileSync(binary, target);
  return target;
}

// On Linux, the newest glibc and libstdc++ symbol versions the binary needs (what a machine must
// have for it to load; elsewhere, or without binutils' objdump, nothing).
function requirements(binary) {
  if (process.platform !== 'linux') return '';
  let symbols;
  try {
    symbols = execFileSync('objdump', ['-T', binary], { encoding: 'utf8', maxBuffer: 64 << 20 });
  } catch {
    return '';
  }
  const newest = (prefix) =>
    [...new Set(symbols.match(new RegExp(`${prefix}_[0-9.]+`, 'g')) ?? [])]
      .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
      .pop();
  return `; needs ${[newest('GLIBC'), newest('GLIBCXX')].filter(Boolean).join(', ')}`;
}

function main(args) {
  let binary;
  const at = args.indexOf('--binary');
  if (at >= 0) {
    binary = path.resolve(args[at + 1] ?? '');
  } else {
    const out = 'build-prebuild';
    // From scratch (`rebuild`: `compile` would keep the switches of the directory's first run).
    const cuda = args.includes('--cpu-only') ? 'OFF' : 'AUTO';
    const switches = [`--CDMOE_ROUTER_CUDA=${cuda}`, '--CDMOE_ROUTER_CUDA_ARCHS=release'];
    const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
    execFileSync(process.execPath, [cmakeJs, 'rebuild', '-O', out, ...switches], { cwd: root, stdio: 'inherit' });
    binary = path.join(root, out, 'Release', 'moe_router.node');
  }
  const target = stage(binary, root);
  // The staged file must load; it says which backends it carries (codes as src/options.ts BACKENDS).
  const compiled = execFileSync(
    process.execPath,
    [
      '-p',
      `const a = require(${JSON.stringify(target)});` +
        `['scalar', 'avx2', 'avx512', 'neon', 'cuda'].filter((name, i) => a.backendCompiled(i + 1)).join(' ')`,
    ],
    { encoding: 'utf8' },
  ).trim();
  const size = fs.statSync(target).size;
  console.log(`prebuilt ${path.relative(root, target)} (${size} bytes): ${compiled}${requirements(target)}`);
}

if (require.main === module) main(process.argv.slice(2));

module.exports = { prebuildPath, stage };
