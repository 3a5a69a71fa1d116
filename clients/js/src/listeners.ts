/**
 * An application's listeners of one kind. `emit` calls each through `guard`, which reports one
 * that throws, so the others still run (and socket.io-client's own handlers are not broken).
 */
export class Listeners<A extends unknown[]> {
  private readonly set = new Set<(...args: A) => void>();

  constructor(private readonly guard: (run: () => void) => void) {}

  /** Adds `listener`; returns the function that removes it. */
  add(listener: (...args: A) => void): () => void {
    this.set.add(listener);
    return () => void this.set.delete(listener);
  }

  get size(): number {
    return this.set.size;
  }

  clear(): void {
    this.set.clear();
  }

  emit(...args: A): void {
    for (const listener of [...this.set]) this.guard(() => listener(...args));
  }
}
