/**
 * Reusable output buffers: a route takes them from the pool, Routing.release() gives them back.
 * Items are kept by a size key (a router's outputs for T tokens) and created by the caller on a miss.
 */
export class BufferPool<T extends object = object> {
  private readonly free = new Map<number, T[]>();
  private readonly limitPerSize: number;
  private readonly keeps: (item: T) => boolean;
  /** Items created (misses) and handed out again (hits). */
  allocated = 0;
  reused = 0;

  /** `keeps` says whether a released item may be handed out again (else it is dropped). */
  constructor(limitPerSize = 8, keeps: (item: T) => boolean = () => true) {
    this.limitPerSize = limitPerSize;
    this.keeps = keeps;
  }

  /** A free item of this size, else make(size). */
  acquire(size: number, make: (size: number) => T): T {
    const found = this.free.get(size)?.pop();
    if (found) {
      this.reused += 1;
      return found;
    }
    this.allocated += 1;
    return make(size);
  }

  release(size: number, item: T): void {
    if (!this.keeps(item)) return;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    if (list.length < this.limitPerSize && !list.includes(item)) list.push(item);
  }

  clear(): void {
    this.free.clear();
  }
}
