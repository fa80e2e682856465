/** Finds and loads the compiled engine, and explains a failure with what to run. */
import { createRequire } from 'node:module';
import path from 'node:path';
import nodeGypBuild from 'node-gyp-build';
import type { NativeAddon } from './addon-types';

const packageRoot = path.resolve(__dirname, '..');

let cached: NativeAddon | undefined;

export function loadNative(): NativeAddon {
  if (cached) return cached;
  const override = process.env.MOE_ROUTER_NATIVE_PATH;
  try {
    // MOE_ROUTER_NATIVE_PATH: an explicit .node file (another build directory, a debug build).
    cached = (override ? createRequire(__filename)(path.resolve(override)) : nodeGypBuild(packageRoot)) as NativeAddon;
    return cached;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(
      [
        `Could not load the dynamic-moe-router native engine for ${process.platform}-${process.arch} (Node ${process.versions.node}).`,
        override
          ? `MOE_ROUTER_NATIVE_PATH=${override} could not be loaded.`
          : `Neither a prebuilt binary for this platform (in ${path.join(packageRoot, 'prebuilds')}) nor a local build ` +
            `(in ${path.join(packageRoot, 'build', 'Release')}) could be loaded; the original error below says why.`,
        'To build it from source:',
        '  - install CMake >= 3.18 and a C++17 compiler (Debian/Ubuntu: apt-get install cmake g++),',
        "  - allow the package's install script, which does the build (npm 12 skips the scripts a project has",
        '    not allowed): npm install-scripts approve dynamic-moe-router (npm >= 11.16),',
        '  - then run: npm rebuild dynamic-moe-router',
        `Original error: ${reason}`,
      ].join('\n'),
      { cause: error },
    );
  }
}
