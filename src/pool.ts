/** Reusable output buffers: a route takes them from the pool, Routing.release() gives them back. */
type PooledArray = Int32Array | Float32Array | Float64Array;
type Ctor<T extends PooledArray> = new (length: number) => T;

export class BufferPool {
  // constructor -> length -> free buffers; no string keys on the hot path.
  private readonly free = new Map<Function, Map<number, PooledArray[]>>();
  private readonly limitPerSize: number;
  /** Buffers created (misses) and handed out again (hits). */
  allocated = 0;
  reused = 0;

  constructor(limitPerSize = 8) {
    this.limitPerSize = limitPerSize;
  }

  acquire<T extends PooledArray>(ctor: Ctor<T>, length: number): T {
    const found = this.free.get(ctor)?.get(length)?.pop();
    if (found) {
      this.reused += 1;
      return found as T;
    }
    this.allocated += 1;
    return new ctor(length);
  }

  release(array: PooledArray): void {
    let bySize = this.free.get(array.constructor);
    if (!bySize) {
      bySize = new Map();
      this.free.set(array.constructor, bySize);
    }
    let list = bySize.get(array.length);
    if (!list) {
      list = [];
      bySize.set(array.length, list);
    }
    if (list.length < this.limitPerSize && !list.includes(array)) list.push(array);
  }

  clear(): void {
    this.free.clear();
  }
}
