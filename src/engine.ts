/** Engine-wide queries. */
import { loadNative } from './native';
import { BACKENDS } from './options';

/** The CPU backends this machine and build can run, scalar first (for tests and benchmarks). */
export function backends(): string[] {
  const addon = loadNative();
  return ['scalar', 'avx2', 'avx512', 'neon'].filter((name) => addon.backendAvailable(BACKENDS.indexOf(name as never)));
}

/** The native engine's version. */
export function engineVersion(): string {
  return loadNative().version();
}
