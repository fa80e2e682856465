/** Reusable output buffers: a route takes them from the pool, Routing.release() gives them back. */
type PooledArray = Int32Array | Float32Array | Float64Array;
type Ctor<T extends PooledArray> = { new (length: number): T; name: string };

export class BufferPool {
  private readonly free = new Map<string, PooledArray[]>();
  private readonly limitPerSize: number;
  /** Buffers created (misses) and handed out again (hits). */
  allocated = 0;
  reused = 0;

  constructor(limitPerSize = 8) {
    this.limitPerSize = limitPerSize;
  }

  acquire<T extends PooledArray>(ctor: Ctor<T>, length: number): T {
    const list = this.free.get(`${ctor.name}:${length}`);
    const found = list?.pop();
    if (found) {
      this.reused += 1;
      return found as T;
    }
    this.allocated += 1;
    return new ctor(length);
  }

  release(array: PooledArray): void {
    const key = `${array.constructor.name}:${array.length}`;
    let list = this.free.get(key);
    if (!list) {
      list = [];
      this.free.set(key, list);
    }
    if (list.length < this.limitPerSize && !list.includes(array)) list.push(array);
  }

  clear(): void {
    this.free.clear();
  }
}
