// What a RoutingCache entry really costs against what the cache counts for it (maxBytes' accounting):
// fills a cache with 100 000 distinct one-token routes and reads the heap and ArrayBuffer growth.
//   node --expose-gc bench/cache-memory.cjs request|token D E K      (after npm install, which builds dist/)
'use strict';
const { DynamicRouter, RoutingCache } = require('../dist/index.js');
const [mode, D, E, K] = [process.argv[2], ...process.argv.slice(3, 6).map(Number)];
const W = new Float32Array(E * D).map(() => Math.random() - 0.5);
const r = new DynamicRouter({ inputDim: D, numExperts: E, topK: K, weight: W });
const c = new RoutingCache(r, { maxBytes: 2 ** 40, mode });
const x = new Float32Array(D);
const N = 100000;
// warm
for (let i = 0; i < 1000; i++) { x[0] = i; c.route(x).release(); }
gc(); gc();
const m0 = process.memoryUsage();
const s0 = c.cacheStats();
for (let i = 1000; i < 1000 + N; i++) { x[0] = i; x[1] = Math.random(); c.route(x).release(); }
gc(); gc();
const m1 = process.memoryUsage();
const s1 = c.cacheStats();
const real = (m1.heapUsed - m0.heapUsed + m1.arrayBuffers - m0.arrayBuffers) / (s1.entries - s0.entries);
const counted = (s1.bytes - s0.bytes) / (s1.entries - s0.entries);
console.log(mode, D, E, K, 'real/entry', real.toFixed(0), 'counted/entry', counted.toFixed(0), 'ratio', (real / counted).toFixed(2));
