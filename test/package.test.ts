// The npm package as a user gets it: packed with a prebuilt engine (scripts/prebuild.js), installed
// from its tarball into a new project, it compiles nothing, loads the prebuilt binary (with install
// scripts and without them), runs its CLI and routes as this checkout's build does. npm resolves the
// package's dependencies from its cache, which this checkout's own install filled.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engine, privateBuild, root } from './helpers/private-build';

const { stage } = createRequire(__filename)('../scripts/prebuild.js') as {
  stage(binary: string, packageRoot: string): string;
};

// npm, without the npm_* variables of the `npm test` that runs this, nor an engine named explicitly.
const env = Object.fromEntries(
  Object.entries(process.env).filter(([name]) => !name.startsWith('npm_') && name !== 'MOE_ROUTER_NATIVE_PATH'),
);
const npm = (args: string[], cwd: string) =>
  execFileSync('npm', args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let work: string;
let built: ReturnType<typeof privateBuild>;
let tarball: string;
let tarballFiles: string[];
let prebuilt: string;
let reference: string; // this checkout's answer: its build, through the privately built dist/

beforeAll(() => {
  // The package's dist/ built privately (helpers/private-build.ts): the reference routes with it.
  built = privateBuild('moe-package');
  // The package and the projects outside this checkout, so that the installed package finds only the
  // dependencies it declares: the files `npm pack` takes from this checkout, that dist/, and this
  // checkout's engine staged as the prebuilt binary.
  work = mkdtempSync(path.join(tmpdir(), 'moe-package-'));
  const pkg = path.join(work, 'pkg');
  const [{ files }] = JSON.parse(npm(['pack', '--dry-run', '--json', '--ignore-scripts'], root)) as [
    { files: { path: string }[] },
  ];
  for (const { path: file } of files)
    if (!file.startsWith('dist/') && !file.startsWith('prebuilds/')) cpSync(path.join(root, file), path.join(pkg, file));
  cpSync(built.dir, path.join(pkg, 'dist'), { recursive: true });
  prebuilt = path.relative(pkg, stage(engine(), pkg));
  const [packed] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], pkg)) as [
    { filename: string; files: { path: string }[] },
  ];
  tarball = path.join(work, packed.filename);
  tarballFiles = packed.files.map((f) => f.path);
  reference = routeWith(`require(${JSON.stringify(built.dir)})`, { engine: engine() });
}, 180_000);
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
  built.remove();
});

// A new project with the tarball installed into it; returns the installed package's directory.
function install(name: string, extra: string[]): string {
  const app = path.join(work, name);
  mkdirSync(app);
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name, private: true }));
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', ...extra, tarball], app);
  return path.join(app, 'node_modules', 'dynamic-moe-router');
}

// The backend, experts, weights and aux loss of a fixed batch routed in a child process by the
// module that `load` (a JavaScript expression) gives; `options` for that process (cwd, env).
function routeWith(load: string, options: { cwd?: string; engine?: string; esm?: boolean } = {}): string {
  const script = `
    const { DynamicRouter } = ${load};
    const D = 256, E = 32, T = 64;
    const router = new DynamicRouter({ inputDim: D, numExperts: E, topK: 4, losses: true,
      weight: new Float32Array(E * D).map((_, i) => Math.sin(i * 0.37)) });
    const r = router.route(new Float32Array(T * D).map((_, i) => Math.cos(i * 0.11)));
    console.log(JSON.stringify({ backend: router.backend, experts: Array.from(r.experts),
      weights: Array.from(r.weights), auxLoss: r.auxLoss }));`;
  const childEnv = options.engine ? { ...env, MOE_ROUTER_NATIVE_PATH: options.engine } : env;
  const args = options.esm ? ['--input-type=module', '-e', script] : ['-e', script];
  return execFileSync(process.execPath, args, { cwd: options.cwd, env: childEnv, encoding: 'utf8' });
}

describe('the npm package', () => {
  it('carries the prebuilt engine, the sources to build one, its license, and no bench or test files', () => {
    expect(prebuilt).toMatch(/^prebuilds[/\\][a-z0-9]+-[a-z0-9]+[/\\]node\.napi(\.(glibc|musl))?\.node$/);
    expect(tarballFiles).toContain(prebuilt.split(path.sep).join('/'));
    const needed = ['dist/index.js', 'dist/index.d.ts', 'dist/cli.js', 'scripts/install.js'];
    for (const file of [...needed, 'CMakeLists.txt', 'LICENSE', 'README.md']) expect(tarballFiles).toContain(file);
    expect(tarballFiles.some((f) => f.startsWith('native/src/'))).toBe(true);
    expect(tarballFiles.filter((f) => /^(test|bench)\/|bench-anchors/.test(f))).toEqual([]);
  });

  it('installs without compiling, loads the prebuilt engine and routes as this build does', () => {
    const installed = install('app', []);
    expect(existsSync(path.join(installed, 'build'))).toBe(false);
    expect(engine(installed)).toBe(path.join(installed, prebuilt));
    // Required and imported by name from the project, as its code would.
    const app = path.resolve(installed, '..', '..');
    expect(routeWith(`require('dynamic-moe-router')`, { cwd: app })).toBe(reference);
    expect(routeWith(`await import('dynamic-moe-router')`, { cwd: app, esm: true })).toBe(reference);
    // One copy of each class whichever way a part of the program loads it: a Tensor made through
    // `import` routes on a router made through `require`.
    const both =
      `import { createRequire } from 'node:module'; const esm = await import('dynamic-moe-router');` +
      `const cjs = createRequire(process.cwd() + '/')('dynamic-moe-router');` +
      `const r = new cjs.DynamicRouter({ inputDim: 2, numExperts: 2, topK: 1, weight: new Float32Array(4) });` +
      `console.log(esm.Tensor === cjs.Tensor, r.route(esm.Tensor.from(new Float32Array(2), [1, 2])).tokens)`;
    expect(execFileSync(process.execPath, ['--input-type=module', '-e', both], { cwd: app, env, encoding: 'utf8' })).toBe('true 1\n');
    // Its types, for an ES module and a CommonJS one (with Node's types, as any Node project has them).
    const source =
      `import { DynamicRouter, Tensor } from 'dynamic-moe-router';\n` +
      `const router = new DynamicRouter({ inputDim: 4, numExperts: 2, topK: 1, weight: new Float32Array(8) });\n` +
      `const experts: Int32Array = router.route(Tensor.from(new Float32Array(4), [1, 4])).experts;\n` +
      `export const best: number | undefined = experts[0];\n`;
    for (const file of ['check.mts', 'check.cts']) writeFileSync(path.join(app, file), source);
    const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    const types = ['--types', 'node', '--typeRoots', path.join(root, 'node_modules', '@types')];
    const compiler = ['--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', ...types];
    const checked = spawnSync(process.execPath, [tsc, ...compiler, 'check.mts', 'check.cts'], { cwd: app, env, encoding: 'utf8' });
    expect(checked.stdout + checked.stderr).toBe('');
    expect(checked.status).toBe(0);
    const demo = execFileSync(path.join(installed, '..', '.bin', 'moe-router'), ['demo'], { env, encoding: 'utf8' });
    expect(demo).toMatch(/^dynamic-moe-router demo/);
    expect(demo).toMatch(/fewer expert FLOPs/);
  }, 180_000);

  it('works with install scripts turned off, and says what to do when no engine loads', () => {
    const installed = install('app-no-scripts', ['--ignore-scripts']);
    expect(engine(installed)).toBe(path.join(installed, prebuilt));
    expect(routeWith(`require(${JSON.stringify(installed)})`)).toBe(reference);
    rmSync(path.join(installed, 'prebuilds'), { recursive: true });
    const failed = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(installed)}).backends()`], {
      env,
      encoding: 'utf8',
    });
    expect(failed.status).toBe(1);
    expect(failed.stderr).toMatch(/Could not load the dynamic-moe-router native engine/);
    expect(failed.stderr).toMatch(/npm install-scripts approve dynamic-moe-router/);
    expect(failed.stderr).toMatch(/npm rebuild dynamic-moe-router/);
  }, 180_000);
});

describe("this checkout's install", () => {
  // npm 12 runs a dependency's install script only when the root package.json's allowScripts allows it
  // (npm 11.16 and later apply a denial already): each dependency the lockfile says has one is listed,
  // and onnxruntime-node's, which would download CUDA libraries from outside the npm registry, denied.
  it('reviews every dependency install script and denies the one that downloads', () => {
    const read = (file: string) => JSON.parse(readFileSync(path.join(root, file), 'utf8'));
    const lock = read('package-lock.json') as { packages: Record<string, { hasInstallScript?: boolean }> };
    const withScripts = Object.entries(lock.packages)
      .filter(([where, entry]) => where !== '' && entry.hasInstallScript)
      .map(([where]) => where.slice(where.lastIndexOf('node_modules/') + 'node_modules/'.length));
    const { allowScripts } = read('package.json') as { allowScripts: Record<string, boolean> };
    expect(withScripts).toContain('onnxruntime-node');
    expect(Object.keys(allowScripts).sort()).toEqual([...new Set(withScripts)].sort());
    expect(allowScripts['onnxruntime-node']).toBe(false);
  });
});
