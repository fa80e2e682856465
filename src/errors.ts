/** Error codes shared with the native engine (native/include/moe_router.h). */
export const ERROR_CODES = [
  'E_SHAPE',
  'E_DTYPE',
  'E_NONFINITE',
  'E_CONFIG',
  'E_BACKEND',
  'E_CUDA',
  'E_DISPOSED',
  'E_INTERNAL',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** Every error the router throws on purpose. `code` says what kind; the message says what was expected. */
export class RouterError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RouterError';
    this.code = code;
  }
}

/** Turns an error thrown by the addon (a plain Error with a `code`) into a RouterError. */
export function toRouterError(error: unknown): unknown {
  if (error instanceof RouterError) return error;
  if (error instanceof Error) {
    const code = (error as Error & { code?: unknown }).code;
    if (typeof code === 'string' && (ERROR_CODES as readonly string[]).includes(code)) {
      return new RouterError(code as ErrorCode, error.message);
    }
  }
  return error;
}

/** Runs fn, rethrowing addon errors as RouterError. */
export function native<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    throw toRouterError(error);
  }
}

/** Whether `value` is a plain object (not null, not an array): what an options object must be. */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The option names of T, as a record over its keys, so that the compiler keeps the list complete. */
export function optionNames<T>(names: Record<keyof T, true>): readonly string[] {
  return Object.keys(names);
}

/** " (did you mean 'topK'?)" when `name` differs from a known name only in case; otherwise "". */
export function didYouMean(name: string, known: readonly string[]): string {
  const lower = name.toLowerCase();
  const near = known.find((k) => k.toLowerCase() === lower);
  return near ? ` (did you mean '${near}'?)` : '';
}

/** "name is unknown (did you mean …?)" for each key of `given` that `known` lacks. */
export function unknownOptions(given: object, known: readonly string[]): string[] {
  return Object.keys(given)
    .filter((name) => !known.includes(name))
    .map((name) => `${name} is unknown${didYouMean(name, known)}`);
}

/**
 * Throws E_CONFIG naming each key of an options object that is not one of `known` (`what` says whose
 * options they are), so that a misspelled option is never silently left at its default, or saying
 * that what was given is not an object (undefined is: no options).
 */
export function rejectUnknownOptions(what: string, given: unknown, known: readonly string[]): void {
  if (given === undefined) return;
  // (Not an object at all: a dtype given as Tensor.from's third argument, say, must not be skipped.)
  if (!isObject(given)) {
    throw new RouterError('E_CONFIG', `${what}s must be an object (got ${shown(given)})`);
  }
  const lines = unknownOptions(given, known);
  if (lines.length > 0) throw new RouterError('E_CONFIG', lines.map((line) => `${what} ${line}`).join('\n'));
}

/** A value's kind for an error message: its class name (Float64Array, Array, Number), or null/undefined. */
export function kindOf(value: unknown): string {
  return value === null ? 'null' : ((value as object)?.constructor?.name ?? typeof value);
}

/**
 * A typed array of `length` elements, or E_CONFIG saying that `what` is too large when this process
 * cannot allocate it (a length past what one array holds, or more memory than there is), rather than a
 * bare RangeError from deep inside a command.
 */
export function allocate<A>(make: new (length: number) => A, length: number, what: string): A {
  try {
    return new make(length);
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    throw new RouterError('E_CONFIG', `${what} needs ${length} values, more than this process can allocate (${error.message})`, { cause: error });
  }
}

/** A value as a message shows it: JSON, but NaN and ±Infinity as themselves (JSON makes them null). */
export function shown(value: unknown): string {
  return typeof value === 'number' ? String(value) : JSON.stringify(value);
}

/**
 * The problems of one options object, a line each, so that one E_CONFIG names them all (the router's
 * engine then lists its range problems the same way). Each reader notes what is wrong and returns a
 * stand-in (NaN for a number, which no later check takes for a second problem), so that the rest of
 * the object is still read. `error` makes the error raise() throws (a RouterError by default).
 */
export class OptionProblems {
  private readonly lines: string[] = [];

  constructor(private readonly error: (message: string) => Error = (message) => new RouterError('E_CONFIG', message)) {}

  note(line: string): void {
    this.lines.push(`option ${line}`);
  }

  pick<T extends string>(name: string, value: T | undefined, allowed: readonly T[], fallback: T): number {
    const index = allowed.indexOf(value ?? fallback);
    if (index >= 0) return index;
    this.note(`${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')} (got ${shown(value)})`);
    return 0;
  }

  integer(name: string, value: number | undefined, fallback: number): number {
    const v = value ?? fallback;
    if (typeof v === 'number' && Number.isInteger(v)) return v;
    this.note(`${name} must be an integer (got ${shown(value)})`);
    return NaN;
  }

  real(name: string, value: number | undefined, fallback: number): number {
    const v = value ?? fallback;
    if (typeof v === 'number' && !Number.isNaN(v)) return v;
    this.note(`${name} must be a number (got ${shown(value)})`);
    return NaN;
  }

  boolean(name: string, value: unknown): void {
    if (value !== undefined && typeof value !== 'boolean') this.note(`${name} must be a boolean (got ${shown(value)})`);
  }

  /** Throws the error listing every problem noted, if there is one. */
  raise(): void {
    if (this.lines.length > 0) throw this.error(this.lines.join('\n'));
  }
}
