// Bad arguments give a RouterError with the right code and a message that names the argument and
// the expected/actual values; nothing crashes the process. Plus the async twins, determinism and
// buffer release.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { existsSync } from 'node:fs';
import { DynamicRouter, FailoverRouter, ModelFleet, MonitoredRouter, RouterError, RoutingCache, Tensor } from '../src/index';
import { backendList } from './reference/harness';
import { snapshot } from './reference/compare';
import { Rng } from './reference/cases';

const D = 3;
const E = 4;
const W = new Float32Array(E * D).map((_, i) => Math.sin(i + 1));
const base = { inputDim: D, numExperts: E, topK: 2, weight: W };
const make = (patch: Record<string, unknown> = {}) => new DynamicRouter({ ...base, ...patch } as any);

function caught(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}
/** f throws a RouterError with `code` whose message matches every pattern. */
function expectCode(f: () => unknown, code: string, ...patterns: RegExp[]) {
  const e = caught(f);
  if (!(e instanceof RouterError)) throw new Error(`expected RouterError ${code}, got ${e === undefined ? 'no error' : String(e)}`);
  expect(e.code).toBe(code);
  expect(e).toBeInstanceOf(Error);
  for (const p of patterns) expect(e.message).toMatch(p);
}
async function expectRejects(p: Promise<unknown>, code: string, ...patterns: RegExp[]) {
  let e: unknown;
  try {
    await p;
  } catch (x) {
    e = x;
  }
  if (!(e instanceof RouterError)) throw new Error(`expected a rejection with RouterError ${code}, got ${String(e)}`);
  expect(e.code).toBe(code);
  for (const pat of patterns) expect(e.message).toMatch(pat);
}

describe('E_CONFIG: options out of range', () => {
  const cases: [string, Record<string, unknown>, RegExp[]][] = [
    ['topK > numExperts', { topK: 5 }, [/topK/, /5/]],
    ['topK = 0', { topK: 0 }, [/topK/, /0/]],
    ['topK not an integer', { topK: 1.5 }, [/topK/, /1\.5/]],
    ['minExperts > topK', { minExperts: 3 }, [/minExperts/, /3/]],
    ['minExperts = 0', { minExperts: 0 }, [/minExperts/]],
    ['inputDim = 0', { inputDim: 0, weight: new Float32Array(0) }, [/inputDim/]],
    ['numExperts = 0', { numExperts: 0, topK: 1, weight: new Float32Array(0) }, [/numExperts/]],
    ['E % groups.count != 0', { groups: { count: 3, select: 1 } }, [/groups/, /3/]],
    ['groups.select > groups.count', { groups: { count: 2, select: 3 } }, [/groups\.select|select/, /3/]],
    ['groups.select = 0', { groups: { count: 2, select: 0 } }, [/select/]],
    ['groups.count = 0', { groups: { count: 0, select: 0 } }, [/groups/]],
    ['groups keep fewer than topK experts', { groups: { count: 4, select: 1 } }, [/groups/]],
    ['groups with expert-choice', { strategy: 'expert-choice', groups: { count: 2, select: 1 } }, [/groups/, /expert-choice/]],
    ['topP = 0', { strategy: 'top-p', topP: 0 }, [/topP/, /0/]],
    ['topP > 1', { strategy: 'top-p', topP: 1.5 }, [/topP/, /1\.5/]],
    ['topP < 0', { strategy: 'top-p', topP: -0.25 }, [/topP/, /-0\.25/]],
    ['topP NaN', { strategy: 'top-p', topP: NaN }, [/topP/]],
    ['threshold NaN', { strategy: 'threshold', threshold: NaN }, [/threshold/]],
    ['threshold infinite', { strategy: 'threshold', threshold: Infinity }, [/threshold/]],
    ['negative capacityFactor', { capacityFactor: -1 }, [/capacityFactor/, /-1/]],
    ['capacityFactor NaN', { capacityFactor: NaN }, [/capacityFactor/]],
    ['negative minCapacity', { capacityFactor: 1, minCapacity: -1 }, [/minCapacity/, /-1/]],
    ['unknown strategy', { strategy: 'bogus' }, [/strategy/, /bogus/, /top-k/]],
    ['unknown scoring', { scoring: 'relu' }, [/scoring/, /relu/]],
    ['unknown order', { order: 'sideways' }, [/order/, /sideways/]],
    ['unknown dropPolicy', { capacityFactor: 1, dropPolicy: 'random' }, [/dropPolicy/, /random/]],
    ['unknown validation', { validation: 'ignore' }, [/validation/, /ignore/]],
    ['unknown device', { device: 'tpu' }, [/device/, /tpu/]],
    ['unknown backend', { backend: 'sse9' }, [/backend/, /sse9/]],
    ['negative noise std', { noise: { std: -1, seed: 1 } }, [/noise/, /-1/]],
    ['negative noise seed', { noise: { std: 1, seed: -3 } }, [/seed/, /-3/]],
    ['noise seed past 2^53', { noise: { std: 1, seed: 2 ** 64 } }, [/seed/, /2\^53/]],
    ['losses not a boolean', { losses: 'false' }, [/losses must be a boolean/, /"false"/]],
    ['dispatch neither a boolean nor an object', { dispatch: 'no' }, [/dispatch must be a boolean or \{ blockSize \}/]],
    ['blockSize = 0', { dispatch: { blockSize: 0 } }, [/blockSize/, /0/]],
    ['negative biasUpdateRate', { biasUpdateRate: -0.5 }, [/biasUpdateRate/, /-0\.5/]],
    ['scale NaN', { scale: NaN }, [/scale/]],
    ['negative threads', { threads: -1 }, [/threads/, /-1/]],
  ];
  for (const [name, patch, patterns] of cases) {
    it(name, () => expectCode(() => make(patch), 'E_CONFIG', ...patterns));
  }

  it('missing or non-object options', () => {
    expectCode(() => new DynamicRouter(null as any), 'E_CONFIG');
    expectCode(() => new DynamicRouter(undefined as any), 'E_CONFIG');
    expectCode(() => new DynamicRouter({ inputDim: D, numExperts: E, weight: W } as any), 'E_CONFIG', /topK/);
  });

  it('every other options object rejects a misspelled key too, instead of leaving its default', () => {
    const r = make({ strategy: 'top-p' });
    const endpoints = [{ id: 'a', invoke: async () => 1 }];
    const cases: [() => unknown, string][] = [
      [() => new RoutingCache(r, { maxbytes: 1 } as any), "cache option maxbytes is unknown (did you mean 'maxBytes'?)"],
      [() => new MonitoredRouter(r, { regisrty: 1 } as any), 'monitor option regisrty is unknown'],
      [() => new MonitoredRouter(r, { alerts: { errorrate: 0.1 } } as any), "monitor alerts option errorrate is unknown (did you mean 'errorRate'?)"],
      [() => new FailoverRouter(r, make(), { treshold: 3 } as any), 'breaker option treshold is unknown'],
      [() => r.calibrate(new Float32Array(D * 8), { meanExperts: 2, logit: true } as any), 'calibrate option logit is unknown'],
      [() => Tensor.from(new Uint16Array(D), [1, D], { dtyp: 'f16' } as any), 'Tensor.from option dtyp is unknown'],
      [() => r.modelCard({ title: 'x' } as any), 'modelCard option title is unknown'],
      [() => make({ noise: { std: 1, Seed: 3 } }), "option noise.Seed is unknown (did you mean 'seed'?)"],
      [() => make({ groups: { count: 2, select: 1, slect: 1 } }), 'option groups.slect is unknown'],
      [() => make({ dispatch: { blockSize: 2, padd: 1 } }), 'option dispatch.padd is unknown'],
      [() => new ModelFleet({ tiers: [{ name: 't', endpoints }], balancr: 'weighted' } as any), 'option balancr is unknown'],
      [
        () => new ModelFleet({ tiers: [{ name: 't', endpoints }], breaker: { failurerate: 0.5 }, retry: { tries: 2 } } as any),
        "option breaker.failurerate is unknown (did you mean 'failureRate'?)\noption retry.tries is unknown",
      ],
    ];
    for (const [f, message] of cases) {
      const e = caught(f) as { code?: string; message?: string };
      expect(e.code).toBe('E_CONFIG');
      expect(e.message).toBe(message);
    }
  });

  it('an unknown option name, with the option it mistypes, beside the other problems', () => {
    const e = caught(() => make({ topp: 0.5, minExperts: 1.5, colour: 'blue' }));
    expect(e).toBeInstanceOf(RouterError);
    expect((e as RouterError).message.split('\n')).toEqual([
      "option topp is unknown (did you mean 'topP'?)",
      'option colour is unknown',
      'option minExperts must be an integer (got 1.5)',
    ]);
  });

  it('lists every bad option at once, a line each: the types, then the ranges', () => {
    const lines = (patch: Record<string, unknown>) => {
      const e = caught(() => make(patch));
      if (!(e instanceof RouterError)) throw new Error(`expected a RouterError, got ${String(e)}`);
      expect(e.code).toBe('E_CONFIG');
      return e.message.split('\n');
    };
    const types = lines({ topK: 1.5, strategy: 'bogus', noise: 3, exactF32: 'yes', scale: NaN, groups: { count: 2.5, select: 1 } });
    expect(types).toHaveLength(6);
    for (const [i, pattern] of [/groups\.count .*2\.5/, /noise/, /exactF32 .*"yes"/, /topK .*1\.5/, /strategy .*"bogus"/, /scale .*NaN/].entries()) {
      expect(types[i]).toMatch(pattern);
    }
    expect(lines({ topK: 5, minExperts: 6, capacityFactor: -1 })).toEqual([
      'option topK must be an integer in [1, numExperts] (got 5)',
      'option minExperts must be an integer in [1, topK] (got 6)',
      'option capacityFactor must be finite and >= 0 (got -1)',
    ]);
    // One mistake is named once: a wrong topK does not make the default minExperts wrong too.
    expect(lines({ topK: -1 })).toEqual(['option topK must be an integer in [1, numExperts] (got -1)']);
    // More than the engine's 512-byte message holds: whole lines, then how many were left out.
    const ranges = {
      ...{ topK: 5, minExperts: 6, topP: 2, threshold: Infinity, scale: Infinity, biasUpdateRate: -1 },
      ...{ capacityFactor: -1, minCapacity: -1, noise: { std: -1, seed: 1 }, dispatch: { blockSize: 0 } },
      ...{ threads: -1, groups: { count: 3, select: 0 } },
    };
    const many = lines(ranges);
    const untold = /^\(and (\d+) more\)$/.exec(many[many.length - 1]);
    expect(untold).not.toBeNull();
    expect(many.length - 1 + Number(untold![1])).toBe(13);
    for (const line of many.slice(0, -1)) expect(line).toMatch(/^option \S+ must be .* \(got \S+\)$/);
    expect(many.join('\n').length).toBeLessThan(512);
  });

  it('step must be a non-negative integer', () => {
    const r = make();
    expectCode(() => (r.step = -1), 'E_CONFIG', /step/, /-1/);
    expectCode(() => (r.step = 1.5), 'E_CONFIG', /step/, /1\.5/);
    expectCode(() => (r.step = NaN), 'E_CONFIG', /step/);
    r.step = 2 ** 40;
    expect(r.step).toBe(2 ** 40);
  });

  it('calibrate and updateBias check their preconditions', () => {
    expectCode(() => make().calibrate(new Float32Array(D * 4), { meanExperts: 1.5 }), 'E_CONFIG', /calibrate/);
    expectCode(() => make({ strategy: 'entropy' }).calibrate(new Float32Array(D * 4), { meanExperts: 1.5 }), 'E_CONFIG');
    const p = make({ strategy: 'top-p', topP: 0.5 });
    expectCode(() => p.calibrate(new Float32Array(D * 4), { meanExperts: 3 }), 'E_CONFIG', /meanExperts/, /3/);
    expectCode(() => p.calibrate(new Float32Array(D * 4), { meanExperts: 0.5 }), 'E_CONFIG', /meanExperts/);
    expectCode(() => p.calibrate(new Float32Array(D * 4), { meanExperts: NaN }), 'E_CONFIG', /meanExperts/);
    expectCode(() => make().updateBias(new Int32Array(E)), 'E_CONFIG', /biasUpdateRate/);
  });
});

describe('E_SHAPE: wrong length or shape', () => {
  it('constructor arrays', () => {
    expectCode(() => make({ weight: new Float32Array(11) }), 'E_SHAPE', /weight/, /12/, /11/);
    expectCode(() => make({ bias: new Float32Array(3) }), 'E_SHAPE', /bias/, /4/, /3/);
    expectCode(() => make({ selectionBias: new Float32Array(5) }), 'E_SHAPE', /selectionBias/, /4/, /5/);
    expectCode(() => make({ weight: Tensor.from(new Float32Array(11), [11]) }), 'E_SHAPE', /weight/);
  });

  it('a weight tensor must be [numExperts, inputDim] (a transposed [inputDim, numExperts] is rejected)', () => {
    expectCode(() => make({ weight: Tensor.from(new Float32Array(12), [D, E]) }), 'E_SHAPE', /weight/, /4/, /3/);
  });

  it('route / routeLogits inputs', () => {
    const r = make();
    expectCode(() => r.route(new Float32Array(4)), 'E_SHAPE', /hidden/, /3/, /4/);
    expectCode(() => r.route(Tensor.from(new Float32Array(8), [2, 4])), 'E_SHAPE', /hidden/, /3/, /2, 4/);
    expectCode(() => r.route(Tensor.from(new Float32Array(6), [1, 2, 3])), 'E_SHAPE', /hidden/);
    expectCode(() => r.routeLogits(new Float32Array(5)), 'E_SHAPE', /logits/, /4/, /5/);
    expectCode(() => r.routeLogits(Tensor.from(new Float32Array(5), [1, 5])), 'E_SHAPE', /logits/, /4/, /5/);
    expectCode(() => r.routeLogits(Tensor.from(new Float32Array(6), [2, 3])), 'E_SHAPE', /logits/);
  });

  it('Tensor.from checks data length against shape', () => {
    expectCode(() => Tensor.from(new Float32Array(5), [2, 3]), 'E_SHAPE', /5/, /2, 3|6/);
    expectCode(() => Tensor.from(new Uint16Array(7), [2, 3], { dtype: 'f16' }), 'E_SHAPE');
  });

  it('Tensor.from names data that holds no numbers, instead of reading its length', () => {
    // (null threw a TypeError; a number was "data has undefined elements")
    for (const [data, kind] of [[null, 'null'], [undefined, 'undefined'], [6, 'Number'], ['abcdef', 'String'],
      [{ length: 6 }, 'Object'], [new BigInt64Array(6), 'BigInt64Array'], [new DataView(new ArrayBuffer(24)), 'DataView']] as const) {
      expectCode(() => Tensor.from(data as any, [2, 3]), 'E_DTYPE', /Tensor data must be/, new RegExp(`got ${kind}\\)`));
    }
    expect(Tensor.from(new Float64Array(6), [2, 3]).data).toEqual(new Float32Array(6));
    expect(Tensor.from([1, 2, 3, 4, 5, 6], [2, 3], { dtype: 'bf16' }).dtype).toBe('bf16');
  });

  it('a dtype that is a name every object inherits, or options that are not an object, are errors', () => {
    for (const dtype of ['toString', 'constructor', '__proto__', 'valueOf']) {
      expectCode(() => Tensor.from(new Float32Array(D), [1, D], { dtype } as any), 'E_DTYPE', /dtype must be 'f32', 'f16' or 'bf16'/);
    }
    expectCode(() => Tensor.from(new Uint16Array(D), [1, D], 'f16' as any), 'E_CONFIG', /Tensor.from options must be an object \(got "f16"\)/);
    const r = make();
    expectCode(() => new RoutingCache(r, null as any), 'E_CONFIG', /cache options must be an object \(got null\)/);
    expectCode(() => new MonitoredRouter(r, 5 as any), 'E_CONFIG', /monitor options must be an object/);
    expectCode(() => r.modelCard([] as any), 'E_CONFIG', /modelCard options must be an object/);
  });

  it('an async call refuses rows in a resizable ArrayBuffer, which could shrink under the worker thread', async () => {
    const r = make();
    const Resizable = ArrayBuffer as unknown as new (bytes: number, options: { maxByteLength: number }) => ArrayBuffer;
    const rows = new Float32Array(new Resizable(4 * D, { maxByteLength: 8 * D })).fill(0.5);
    await expect(r.routeAsync(rows)).rejects.toMatchObject({ code: 'E_DTYPE', message: expect.stringMatching(/resizable ArrayBuffer/) });
    expect(r.route(rows).tokens).toBe(1);
  });

  it('calibrate sample and updateBias counts', () => {
    const p = make({ strategy: 'top-p', topP: 0.5 });
    expectCode(() => p.calibrate(new Float32Array(4), { meanExperts: 1.5 }), 'E_SHAPE', /sample/, /3/, /4/);
    expectCode(() => p.calibrate(new Float32Array([1, 2, 3, 4, NaN, 6]), { meanExperts: 1.5 }), 'E_NONFINITE', /^sample row 1 /);
    const b = make({ biasUpdateRate: 0.1 });
    expectCode(() => b.updateBias(new Int32Array(3)), 'E_SHAPE', /counts/, /4/, /3/);
  });

  it('async twins reject the same way', async () => {
    const r = make();
    await expectRejects(r.routeAsync(new Float32Array(4)), 'E_SHAPE', /hidden/);
    await expectRejects(r.routeLogitsAsync(new Float32Array(5)), 'E_SHAPE', /logits/);
  });
});

describe('E_DTYPE: wrong array type or dtype', () => {
  it('route / routeLogits inputs', () => {
    const r = make();
    for (const bad of [new Float64Array(3), new Int32Array(3), new Uint16Array(3), [0, 0, 0], null, undefined, 'abc', 42, {}]) {
      expectCode(() => r.route(bad as any), 'E_DTYPE', /hidden/, /Float32Array|Tensor/);
      expectCode(() => r.routeLogits(bad as any), 'E_DTYPE', /logits/);
    }
  });

  it('constructor arrays', () => {
    expectCode(() => make({ weight: new Float64Array(12) }), 'E_DTYPE', /weight/, /Float32Array/);
    expectCode(() => make({ weight: Array(12).fill(0) }), 'E_DTYPE', /weight/);
    expectCode(() => make({ weight: undefined }), 'E_DTYPE', /weight/);
    expectCode(() => make({ bias: [0, 0, 0, 0] }), 'E_DTYPE', /bias/);
    expectCode(() => make({ selectionBias: new Float64Array(4) }), 'E_DTYPE', /selectionBias/);
  });

  it('Tensor dtypes', () => {
    expectCode(() => Tensor.from(new Uint16Array(6), [2, 3], { dtype: 'f64' as any }), 'E_DTYPE', /dtype/, /f64/);
    expectCode(() => Tensor.from(new Uint16Array(6) as any, [2, 3], { dtype: 'f32' }), 'E_DTYPE', /f32/, /Uint16Array/);
  });

  it('updateBias counts must be an Int32Array', () => {
    expectCode(() => make({ biasUpdateRate: 0.1 }).updateBias(new Float32Array(4) as any), 'E_DTYPE', /counts/, /Int32Array/);
  });

  it('async twins reject the same way', async () => {
    await expectRejects(make().routeAsync(new Float64Array(3) as any), 'E_DTYPE', /hidden/);
    await expectRejects(make().routeLogitsAsync([1, 2, 3, 4] as any), 'E_DTYPE', /logits/);
  });
});

describe('E_NONFINITE under reject', () => {
  it('names the first bad token, sync and async, hidden and logits', async () => {
    const r = make();
    const logits = new Float32Array(50 * E).map((_, i) => Math.cos(i));
    logits[37 * E + 2] = NaN;
    logits[41 * E] = Infinity;
    expectCode(() => r.routeLogits(logits), 'E_NONFINITE', /\b37\b/);
    await expectRejects(r.routeLogitsAsync(logits), 'E_NONFINITE', /\b37\b/);
    const hidden = new Float32Array(20 * D).map((_, i) => Math.sin(i));
    hidden[13 * D + 1] = -Infinity;
    expectCode(() => r.route(hidden), 'E_NONFINITE', /\b13\b/);
    await expectRejects(r.routeAsync(hidden), 'E_NONFINITE', /\b13\b/);
    const f16 = new Uint16Array(2 * D);
    f16[D] = 0x7e00; // NaN in token 1
    expectCode(() => r.route(Tensor.from(f16, [2, D], { dtype: 'f16' })), 'E_NONFINITE', /\b1\b/);
    // the router keeps working
    expect(r.route(new Float32Array(D)).tokens).toBe(1);
  });
});

describe('E_DISPOSED', () => {
  it('every method after dispose()', async () => {
    const r = make({ strategy: 'top-p', topP: 0.5, biasUpdateRate: 0.1 });
    r.dispose();
    expectCode(() => r.route(new Float32Array(D)), 'E_DISPOSED');
    expectCode(() => r.routeLogits(new Float32Array(E)), 'E_DISPOSED');
    expectCode(() => r.calibrate(new Float32Array(D), { meanExperts: 1 }), 'E_DISPOSED');
    expectCode(() => r.updateBias(new Int32Array(E)), 'E_DISPOSED');
    expectCode(() => r.stats(), 'E_DISPOSED');
    await expectRejects(r.routeAsync(new Float32Array(D)), 'E_DISPOSED');
    await expectRejects(r.routeLogitsAsync(new Float32Array(E)), 'E_DISPOSED');
    r.dispose(); // twice is harmless
  });
});

describe('E_BACKEND', () => {
  const cpu = backendList();
  // Without an NVIDIA device node there can be no usable GPU, whatever the build.
  const gpuPresent = existsSync('/dev/nvidiactl') || existsSync('/dev/nvidia0');
  it("backend: 'cuda' and device: 'cuda' on a machine without a usable GPU", () => {
    for (const patch of [{ backend: 'cuda' }, { device: 'cuda' }]) {
      if (!gpuPresent) expectCode(() => make(patch), 'E_BACKEND', /cuda/);
      else {
        // A GPU machine: either this build has CUDA and uses it, or it says why not.
        const e = caught(() => expect(make(patch).backend).toBe('cuda'));
        if (e !== undefined) expect((e as RouterError).code).toBe('E_BACKEND');
      }
    }
  });
  it('CPU backends this machine lacks', () => {
    for (const name of ['avx2', 'avx512', 'neon'].filter((n) => !cpu.includes(n)))
      expectCode(() => make({ backend: name }), 'E_BACKEND', new RegExp(name));
  });
  it('every listed backend constructs and reports itself', () => {
    for (const name of cpu) expect(make({ backend: name }).backend).toBe(name);
    expect(cpu).toContain(make({ device: 'cpu' }).backend);
    expect(cpu).toContain(make().backend);
  });
});

describe('nothing crashes the process', () => {
  it('garbage inputs give RouterError', () => {
    const r = make();
    fc.assert(
      fc.property(fc.anything(), (x) => {
        for (const f of [() => r.route(x as any), () => r.routeLogits(x as any)]) {
          const e = caught(f);
          if (!(e instanceof RouterError)) throw new Error(`input ${fc.stringify(x)} gave ${String(e)}`);
        }
      }),
      { seed: 7, numRuns: 300 },
    );
  });
  it('garbage option values give RouterError or a working router', () => {
    const keys = [
      'inputDim', 'numExperts', 'topK', 'weight', 'bias', 'minExperts', 'strategy', 'topP', 'threshold', 'scoring',
      'order', 'normalize', 'scale', 'groups', 'selectionBias', 'biasUpdateRate', 'capacityFactor', 'minCapacity',
      'dropPolicy', 'noise', 'dispatch', 'losses', 'validation', 'device', 'threads', 'backend',
    ];
    fc.assert(
      fc.property(fc.constantFrom(...keys), fc.anything(), (key, value) => {
        let router: DynamicRouter | undefined;
        try {
          router = make({ [key]: value });
        } catch (e) {
          if (!(e instanceof RouterError)) throw new Error(`${key}: ${fc.stringify(value)} gave ${String(e)}`);
          return;
        }
        try {
          router.route(new Float32Array(2 * D).fill(0.5));
        } catch (e) {
          if (!(e instanceof RouterError)) throw new Error(`${key}: ${fc.stringify(value)} then route gave ${String(e)}`);
        } finally {
          router.dispose();
        }
      }),
      { seed: 8, numRuns: 400 },
    );
  });
});

describe.each(backendList())('determinism and async twins, backend %s', (backend) => {
  const rng = new Rng(99);
  const Dd = 40;
  const Ee = 24;
  const T = 700;
  const weight = new Float32Array(Ee * Dd).map(() => rng.normal() * 0.3);
  const hidden = new Float32Array(T * Dd).map(() => rng.normal());
  const logits = new Float32Array(T * Ee).map(() => rng.normal() * 2);
  const opts = {
    inputDim: Dd, numExperts: Ee, topK: 4, weight, backend, strategy: 'top-p', topP: 0.7, capacityFactor: 1.25,
    dropPolicy: 'score', dispatch: { blockSize: 8 }, losses: true, noise: { std: 0.3, seed: 5 },
  } as const;

  it('routeAsync equals route, routeLogitsAsync equals routeLogits, bit for bit', async () => {
    const r = new DynamicRouter(opts as any);
    r.step = 3;
    const a = snapshot(r.route(hidden));
    r.step = 3;
    const b = snapshot(await r.routeAsync(hidden));
    expect(b).toEqual(a);
    r.step = 9;
    const c = snapshot(r.routeLogits(logits));
    r.step = 9;
    const d = snapshot(await r.routeLogitsAsync(logits));
    expect(d).toEqual(c);
    // f16 input through the async path too
    const t = Tensor.from(new Uint16Array(T * Dd).map((_, i) => 0x3000 + (i % 997)), [T, Dd], { dtype: 'f16' });
    r.step = 1;
    const e = snapshot(r.route(t));
    r.step = 1;
    expect(snapshot(await r.routeAsync(t))).toEqual(e);
  });

  it('concurrent async calls each get their own, correct result', async () => {
    const r = new DynamicRouter({ ...opts, noise: undefined } as any);
    const inputs = [0, 1, 2, 3, 4, 5].map((k) => hidden.map((v, i) => v + ((i * k) % 7) * 0.01));
    const sync = inputs.map((x) => snapshot(r.route(x)));
    const all = await Promise.all(inputs.map((x) => r.routeAsync(x)));
    all.forEach((res, i) => expect(snapshot(res)).toEqual(sync[i]));
  });

  it('repeated calls and different thread counts give bit-identical results', () => {
    const first = new DynamicRouter({ ...opts, noise: undefined } as any);
    const ref = snapshot(first.route(hidden));
    for (let i = 0; i < 3; i++) expect(snapshot(first.route(hidden))).toEqual(ref);
    for (const threads of [1, 2, 3]) {
      const r = new DynamicRouter({ ...opts, noise: undefined, threads } as any);
      expect(snapshot(r.route(hidden))).toEqual(ref);
      expect(snapshot(r.routeLogits(logits))).toEqual(snapshot(first.routeLogits(logits)));
    }
  });

  it('a decoding batch, its gate split across threads by panels of experts, routes as on one thread', () => {
    // Few tokens and a large E x D: each thread computes the logits of its own experts, which the
    // caller gathers before the selection (bench/NOTES.md item 63).
    for (const [D, E] of [[2048, 64], [1000, 96]] as const) {
      const w = new Float32Array(E * D).map(() => rng.normal() * 0.05);
      const routers = [1, 2, 3].map((threads) => new DynamicRouter({ inputDim: D, numExperts: E, topK: 8, weight: w, backend, losses: true, threads } as any));
      for (const tokens of [1, 5, 8, 48]) {
        const data = new Float32Array(tokens * D).map(() => rng.normal());
        for (const dtype of ['f32', 'bf16'] as const) {
          const x = Tensor.from(data, [tokens, D], { dtype });
          const want = snapshot(routers[0]!.route(x));
          // Twice: a worker asleep when the first call starts may leave all its panels to the caller.
          for (const r of routers.slice(1))
            for (const call of [1, 2]) expect(snapshot(r.route(x)), `D ${D} E ${E} T ${tokens} ${dtype} call ${call}`).toEqual(want);
        }
      }
      for (const r of routers) r.dispose();
    }
  });

  it('release() hands buffers back; routing again works', () => {
    const r = new DynamicRouter({ ...opts, noise: undefined } as any);
    const x1 = hidden;
    const x2 = hidden.map((v) => -v);
    const want1 = snapshot(r.route(x1));
    const want2 = snapshot(r.route(x2));
    for (let i = 0; i < 4; i++) {
      const a = r.route(x1);
      expect(snapshot(a)).toEqual(want1);
      a.release();
      const b = r.route(x2);
      expect(snapshot(b)).toEqual(want2);
      b.release();
    }
    const last = r.route(x1);
    last.release();
    last.release(); // twice is harmless
    expect(snapshot(r.route(x1))).toEqual(want1);
  });
});
