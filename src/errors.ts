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
