/** A SyncStorage in memory (tests, or apps that persist the pack themselves). Writes are trivially atomic. */
import { concatBytes } from "./bytes.js";
import type { SyncStorage } from "./sync.js";

export class MemoryStorage implements SyncStorage {
  readonly files = new Map<string, Uint8Array>();
  readonly location = "memory";

  async read(name: string) {
    return this.files.get(name)?.slice() ?? null;
  }
  async writeAtomic(name: string, data: Uint8Array) {
    this.files.set(name, data.slice());
  }
  async append(name: string, data: Uint8Array) {
    this.files.set(name, concatBytes([this.files.get(name) ?? new Uint8Array(0), data]));
  }
  async size(name: string) {
    return this.files.get(name)?.length ?? 0;
  }
  async remove(name: string) {
    this.files.delete(name);
  }
  async list(prefix: string) {
    return [...this.files.keys()].filter((k) => k.startsWith(prefix));
  }
}
