/** The sync cache on the file system: `<cacheDir>/<catalogId>/...`, whole files written to a temp file and renamed. */
import { appendFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";

import type { SyncStorage } from "../core/sync.js";

export class FileStorage implements SyncStorage {
  readonly dir: string;

  constructor(cacheDir: string, catalogId: string) {
    if (!catalogId || /[/\\]|^\.\.?$/.test(catalogId)) throw new TypeError(`catalog id ${JSON.stringify(catalogId)} cannot name a cache folder`);
    this.dir = join(cacheDir, catalogId);
  }

  get location(): string {
    return this.dir;
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  async read(name: string): Promise<Uint8Array | null> {
    try {
      return new Uint8Array(await readFile(this.path(name)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw e;
    }
  }

  async writeAtomic(name: string, data: Uint8Array): Promise<void> {
    const target = this.path(name);
    await mkdir(dirname(target), { recursive: true });
    const tmp = join(dirname(target), `.${name.split("/").pop()}.${process.pid}.${Date.now()}.tmp`);
    await writeFile(tmp, data, { flush: true });
    await rename(tmp, target);
  }

  async append(name: string, data: Uint8Array): Promise<void> {
    await mkdir(dirname(this.path(name)), { recursive: true });
    await appendFile(this.path(name), data);
  }

  async size(name: string): Promise<number> {
    try {
      const s = await stat(this.path(name));
      return s.isFile() ? s.size : 0;
    } catch {
      return 0;
    }
  }

  async remove(name: string): Promise<void> {
    await rm(this.path(name), { force: true });
  }

  async list(prefix: string): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const p = join(dir, e.name);
        if (e.isDirectory()) await walk(p);
        else {
          const rel = relative(this.dir, p).split("\\").join("/");
          if (rel.startsWith(prefix)) out.push(rel);
        }
      }
    };
    await walk(this.dir);
    return out;
  }
}
