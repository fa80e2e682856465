#!/usr/bin/env node
// npm install hook: use a prebuilt or already-built engine when one loads, else compile it with cmake-js.
'use strict';
const { execFileSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
try {
  require('node-gyp-build')(root);
  process.exit(0);
} catch {
  // nothing loadable yet: build from source below
}
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
try {
  execFileSync(process.execPath, [cmakeJs, 'compile'], { cwd: root, stdio: 'inherit' });
} catch {
  console.error(
    '\ndynamic-moe-router: building the native engine failed.\n' +
      'It needs CMake >= 3.18 and a C++17 compiler (Debian/Ubuntu: apt-get install cmake g++).\n' +
      'Fix that, then run: npm rebuild dynamic-moe-router\n',
  );
  process.exit(1);
}
