import type { Rec } from "./queue";

/** Where the queue survives a reload: IndexedDB, else localStorage, else memory. */
export interface Store {
  kind: "indexeddb" | "localstorage" | "memory";
  /** Shared with the page's other tabs (one of them sends it). */
  shared: boolean;
  all(): Promise<Rec[]>;
  put(rs: Rec[]): Promise<void>;
  del(ids: string[]): Promise<void>;
}

export function memoryStore(): Store {
  return {
    kind: "memory",
    shared: false,
    all: async () => [],
    put: async () => {},
    del: async () => {},
  };
}

function idb(name: string): Promise<Store> {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(name, 1);
    const timer = setTimeout(() => reject(new Error("IndexedDB did not open")), 3000);
    open.onupgradeneeded = () => open.result.createObjectStore("q", { keyPath: "id" });
    open.onerror = open.onblocked = () => reject(open.error);
    open.onsuccess = () => {
      clearTimeout(timer);
      const db = open.result;
      const tx = <T>(mode: IDBTransactionMode, f: (os: IDBObjectStore) => IDBRequest | void) =>
        new Promise<T>((ok, fail) => {
          const t = db.transaction("q", mode);
          const r = f(t.objectStore("q"));
          t.oncomplete = () => ok((r ? r.result : undefined) as T);
          t.onerror = t.onabort = () => fail(t.error);
        });
      resolve({
        kind: "indexeddb",
        shared: true,
        all: () => tx<Rec[]>("readonly", (os) => os.getAll()),
        put: (rs) => tx("readwrite", (os) => rs.forEach((r) => os.put(r))),
        del: (ids) => tx("readwrite", (os) => ids.forEach((id) => os.delete(id))),
      });
    };
  });
}

function local(name: string): Store {
  const ls = localStorage;
  const prefix = name + ":";
  const probe = prefix + "probe";
  ls.setItem(probe, "1");
  ls.removeItem(probe);
  return {
    kind: "localstorage",
    shared: true,
    all: async () => {
      const out: Rec[] = [];
      for (let i = 0; i < ls.length; i++) {
        const k = ls.key(i);
        if (k && k.startsWith(prefix)) {
          try {
            out.push(JSON.parse(ls.getItem(k) as string));
          } catch {
            // Another script's value under our prefix: not ours.
          }
        }
      }
      return out;
    },
    // A full quota throws here; the caller keeps the event in memory and sends it anyway.
    put: async (rs) => rs.forEach((r) => ls.setItem(prefix + r.id, JSON.stringify(r))),
    del: async (ids) => ids.forEach((id) => ls.removeItem(prefix + id)),
  };
}

/** The first store that works here, in the order of `kinds`. */
export async function openStore(name: string, kinds: Store["kind"][]): Promise<Store> {
  for (const kind of kinds) {
    try {
      if (kind === "indexeddb" && typeof indexedDB == "object") return await idb(name);
      if (kind === "localstorage" && typeof localStorage == "object") return local(name);
    } catch {
      // Blocked (private mode, a sandboxed frame, storage off): try the next.
    }
  }
  return memoryStore();
}
