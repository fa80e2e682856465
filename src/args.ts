/**
 * The command line's flags: parsed strictly (an unknown flag, a flag without its value or a stray
 * argument is an error, never silently ignored) and their values checked, every failure a
 * RouterError E_CONFIG that says what was wrong.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { RouterError } from './errors';

type Options = NonNullable<ParseArgsConfig['options']>;
type Flags<O extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: O; strict: true; allowPositionals: false }>>['values'];

/** The flags of `args` (one command's, after its name), as `options` declares them. */
export function parseFlags<const O extends Options>(args: string[], options: O, usage: string): Flags<O> {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (error) {
    throw new RouterError('E_CONFIG', `${(error as Error).message}\n${usage}`);
  }
}

/** `--name`'s value as an integer in [min, max]; undefined when the flag is absent. */
export function integerFlag(name: string, value: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min} (and below 2^53)` : `in [${min}, ${max}]`;
    throw new RouterError('E_CONFIG', `--${name} must be an integer ${range} (got ${JSON.stringify(value)})`);
  }
  return n;
}

/** `--name`'s value, one of `allowed`; undefined when the flag is absent. */
export function oneOf<T extends string>(name: string, value: string | undefined, allowed: readonly T[]): T | undefined {
  if (value === undefined || (allowed as readonly string[]).includes(value)) return value as T | undefined;
  throw new RouterError('E_CONFIG', `--${name} must be one of ${allowed.join(', ')} (got ${JSON.stringify(value)})`);
}
