import { backoff, Queue, type Rec } from "./queue";
import { openStore, type Store } from "./store";
import type { CartEvent, EventType, FieldError, MetadataByType } from "./types";

export interface Options {
  /** The server's base URL, e.g. `https://ingest.example.com`. */
  endpoint: string;
  /** An ingest key (public: it only sends). */
  apiKey?: string;
  /** Defaults for `track`'s context. */
  userId?: string;
  sessionId?: string;
  /** Queue bounds: past them the oldest events are dropped and reported. */
  maxQueueEvents?: number;
  maxQueueBytes?: number;
  /** Where the queue is kept, in order of preference. */
  storage?: Store["kind"][];
  /** Backoff: first step and caps (ms); the long cap is for requests that keep failing at the network (offline, an ad blocker). */
  backoffBase?: number;
  backoffCap?: number;
  backoffLongCap?: number;
  /** Messages in flight on the WebSocket at once. */
  window?: number;
  /** Bytes of beacons a page may have in flight (the browser allows 64 KiB in all). */
  beaconBudget?: number;
  /** The socket is closed after this long with nothing to send (ms), so idle pages hold no connection. */
  idleTimeout?: number;
  onDelivered?: (event: CartEvent, status: "accepted" | "duplicate") => void;
  onRejected?: (event: CartEvent, errors: FieldError[]) => void;
  onDropped?: (events: CartEvent[], reason: "queue_full") => void;
  /** Sending stopped (401/403), or something else the page should know. */
  onError?: (error: { code: string; message: string; status?: number }) => void;
  /** For tests: stand-ins for the browser's. */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
  store?: Store;
}

export interface Context {
  userId?: string;
  sessionId?: string;
}

export interface Stats {
  queued: number;
  delivered: number;
  duplicates: number;
  rejected: number;
  dropped: number;
  retries: number;
  rateLimited: number;
  unavailable: number;
  beaconed: number;
  leader: boolean;
  storage: string;
  transport: "ws" | "http" | "none";
  stopped: string;
}

interface Waiter {
  ids: Set<string>;
  done: (err?: Error) => void;
}

type Reply = {
  type: string;
  requestId?: string;
  status?: string;
  code?: string;
  message?: string;
  retryable?: boolean;
  retryAfterMs?: number;
  details?: FieldError[];
  errors?: FieldError[];
  results?: { index: number; status: string; errors?: FieldError[] }[];
  serverTime?: string;
  limits?: { maxMessageBytes: number; maxBatchEvents: number };
};

const utf8 = (s: string) => new TextEncoder().encode(s).length;
const g = globalThis as typeof globalThis & Window;

/** A v4 UUID: `crypto.randomUUID` in secure contexts, `getRandomValues` elsewhere. */
export function uuid(): string {
  const c = g.crypto;
  if (c && c.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0;
  b[6] = (b[6] & 15) | 64;
  b[8] = (b[8] & 63) | 128;
  const h = [...b].map((x) => (x + 256).toString(16).slice(1)).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * One page's sender: a persistent queue, one pipelined WebSocket (HTTP batches when it cannot
 * open), retries that keep each event's `eventId`, and a beacon when the page goes away.
 */
export class Client {
  readonly o: Required<Pick<Options, "maxQueueEvents" | "maxQueueBytes" | "backoffBase" | "backoffCap" | "backoffLongCap" | "window" | "beaconBudget" | "idleTimeout">> & Options;
  readonly q: Queue;
  readonly st: Stats;
  private store?: Store;
  private ready: Promise<void>;
  /** Server clock minus page clock, once known. */
  private offset = 0;
  private offsetKnown = false;
  private seq = 0;
  private leader = false;
  private closed = false;
  private ws?: WebSocket;
  private wsReady = false;
  private wsFails = 0;
  private httpUntil = 0;
  private httpBusy = false;
  private maxBytes = 65536;
  private maxBatch = 500;
  private reqSeq = 0;
  /** Messages in flight on the socket: requestId to records. */
  private inflight = new Map<string, Rec[]>();
  private sending = new Set<string>();
  private beaconed = new Set<string>();
  private tab = uuid();
  /** Bytes and send times of this page's beacons: in flight (against the budget) for 10 s. */
  private beacons: number[][] = [];
  /** Persisted records of this tab (to see another tab's leader deliver them), and ids settled here. */
  private persisted = new Set<string>();
  private gone = new Set<string>();
  private attempt = 0;
  private netFails = 0;
  private pauseUntil = 0;
  private timer?: ReturnType<typeof setTimeout>;
  private idle?: ReturnType<typeof setTimeout>;
  /** Tells the sending tab that another tab stored events. */
  private bc?: BroadcastChannel;
  private scheduled = false;
  private writes: Rec[] = [];
  private waiters: Waiter[] = [];
  private release?: () => void;
  private unhook: (() => void)[] = [];

  constructor(options: Options) {
    this.o = {
      maxQueueEvents: 10000,
      maxQueueBytes: 4 << 20,
      backoffBase: 500,
      backoffCap: 30000,
      backoffLongCap: 300000,
      window: 16,
      beaconBudget: 60000,
      idleTimeout: 60000,
      ...options,
      endpoint: options.endpoint.replace(/\/+$/, ""),
    };
    this.q = new Queue(this.o.maxQueueEvents, this.o.maxQueueBytes);
    this.st = { queued: 0, delivered: 0, duplicates: 0, rejected: 0, dropped: 0, retries: 0, rateLimited: 0, unavailable: 0, beaconed: 0, leader: false, storage: "", transport: "none", stopped: "" };
    const name = "cartstream:" + this.o.endpoint;
    // At once, not once the storage is open: a page may track and leave before that (an
    // IndexedDB open takes a few milliseconds, a navigation may commit sooner).
    this.on("pagehide", () => this.leave(name));
    this.on("visibilitychange", () => {
      if (g.document && g.document.visibilityState == "hidden") this.leave(name);
      else this.ls((ls) => ls.removeItem(name + ":spill:" + this.tab));
    });
    this.on("online", () => {
      this.attempt = this.netFails = this.pauseUntil = 0;
      this.kick();
    });
    this.ready = this.start(name);
  }

  private async start(name: string): Promise<void> {
    this.store = this.o.store || (await openStore(name, this.o.storage || ["indexeddb", "localstorage", "memory"]));
    this.st.storage = this.store.kind;
    if (this.closed) return;
    await this.unspill(name, this.store);
    if (this.closed) return;
    const sync = setInterval(() => this.sync(), 1000);
    this.unhook.push(() => clearInterval(sync));
    if (typeof BroadcastChannel == "function") {
      const bc = (this.bc = new BroadcastChannel(name));
      bc.onmessage = () => this.leader && this.sync();
      this.unhook.push(() => bc.close());
    }
    this.elect(name);
    await this.sync();
  }

  /** localStorage, when the page may use it. */
  private ls(f: (ls: Storage) => void) {
    try {
      f(localStorage);
    } catch {
      // Blocked, or full: nothing more can be done on the way out.
    }
  }

  /** The page is hidden or going away: the beacon, and the events not yet stored written where they survive. */
  private leave(name: string) {
    this.beacon();
    // An IndexedDB write still running when the page unloads is lost; localStorage writes at once.
    const rs = this.q.ordered().filter((r) => !this.persisted.has(r.id));
    this.ls((ls) => (rs.length ? ls.setItem(name + ":spill:" + this.tab, JSON.stringify(rs.slice(-1000))) : ls.removeItem(name + ":spill:" + this.tab)));
  }

  /** Takes in what pages that went away left in localStorage. */
  private async unspill(name: string, store: Store) {
    const rs: Rec[] = [];
    this.ls((ls) => {
      for (let i = ls.length - 1; i >= 0; i--) {
        const k = ls.key(i)!;
        if (k.startsWith(name + ":spill:")) {
          rs.push(...JSON.parse(ls.getItem(k)!));
          ls.removeItem(k);
        }
      }
    });
    if (!rs.length) return;
    if (store.shared) await store.put(rs).catch(() => this.drop(this.q.add(rs)));
    else this.drop(this.q.add(rs));
  }

  private on(type: string, f: () => void) {
    if (typeof g.addEventListener != "function") return;
    g.addEventListener(type, f);
    this.unhook.push(() => g.removeEventListener(type, f));
  }

  /** Only one tab sends a shared queue: the holder of a Web Lock, or else of a lease in localStorage. */
  private elect(name: string) {
    const lead = () => {
      if (this.closed) return;
      this.leader = this.st.leader = true;
      this.sync();
    };
    const locks = g.navigator && (g.navigator as Navigator).locks;
    if (!this.store!.shared) return lead();
    if (locks) {
      locks.request(name, () => new Promise<void>((r) => {
        // Granted after close(): give it straight back, or no tab would ever send again.
        if (this.closed) return r();
        this.release = r;
        lead();
      }));
      return;
    }
    const key = name + ":lease";
    const me = uuid();
    const tick = () => {
      let v: { id: string; exp: number } | null = null;
      try {
        v = JSON.parse(localStorage.getItem(key) || "null");
        if (!v || v.exp < Date.now() || v.id == me) {
          // Ours if it still is at the next tick: two tabs writing at once both read back one.
          if (v && v.id == me && !this.leader) lead();
          localStorage.setItem(key, JSON.stringify({ id: me, exp: Date.now() + 3000 }));
        } else if (this.leader) {
          this.leader = this.st.leader = false;
          this.ws && this.ws.close();
        }
      } catch {
        lead();
      }
    };
    tick();
    const lease = setInterval(tick, 1000);
    this.unhook.push(() => {
      clearInterval(lease);
      try {
        if (JSON.parse(localStorage.getItem(key) || "null").id == me) localStorage.removeItem(key);
      } catch {}
    });
  }

  /** Reads the shared queue: the leader takes other tabs' events, others see theirs delivered. */
  private async sync() {
    const store = this.store;
    if (!store || this.closed) return;
    const known = new Set(this.persisted);
    let rs: Rec[];
    try {
      rs = await store.all();
    } catch {
      return;
    }
    const ids = new Set(rs.map((r) => r.id));
    for (const id of known) {
      if (!ids.has(id) && this.q.has(id) && !this.sending.has(id)) this.settle(this.q.get(id)!, "", undefined, true);
    }
    if (this.leader) {
      const fresh = rs.filter((r) => !this.gone.has(r.id) && !this.q.has(r.id));
      fresh.forEach((r) => this.persisted.add(r.id));
      this.drop(this.q.add(fresh));
    }
    this.kick();
  }

  /** Tracks one event: sets its `eventId` and `timestamp` now, queues it, returns its `eventId`. */
  track<T extends EventType>(eventType: T, metadata?: MetadataByType[T] & Record<string, unknown>, context: Context = {}): string {
    const t = Date.now();
    const e: CartEvent = {
      eventId: uuid(),
      userId: context.userId || this.o.userId || "",
      eventType,
      timestamp: new Date(t + this.offset).toISOString(),
      metadata: metadata || {},
    };
    const session = context.sessionId || this.o.sessionId;
    if (session) e.sessionId = session;
    const s = utf8(JSON.stringify(e));
    if (s > 60000) {
      this.st.rejected++;
      this.o.onRejected && this.o.onRejected(e, [{ field: "", code: "too_large", message: "the event is larger than a message may be" }]);
      return e.eventId;
    }
    const r: Rec = { id: e.eventId, t, n: this.seq++, c: this.offsetKnown ? 1 : 0, s, e };
    this.drop(this.q.add([r]));
    if (this.q.has(r.id)) this.persist(r);
    this.kick();
    return e.eventId;
  }

  /** Resolves once every event tracked so far has been answered (delivered or rejected) or dropped. */
  flush(timeoutMs?: number): Promise<void> {
    const ids = new Set(this.q.recs.keys());
    return new Promise((resolve, reject) => {
      if (this.st.stopped) return reject(new Error("stopped: " + this.st.stopped));
      if (!ids.size) return resolve();
      const w: Waiter = { ids, done: (err) => (clearTimeout(tm), err ? reject(err) : resolve()) };
      const tm = timeoutMs ? setTimeout(() => this.finish(w, new Error("flush timed out")), timeoutMs) : undefined;
      this.waiters.push(w);
      this.kick();
    });
  }

  /** Stops sending and closes the socket; queued events stay in storage for the next page. */
  close() {
    this.closed = true;
    this.unhook.forEach((f) => f());
    this.release && this.release();
    clearTimeout(this.timer);
    clearTimeout(this.idle);
    this.ws && this.ws.close(1000);
    this.waiters.slice().forEach((w) => this.finish(w, new Error("closed")));
  }

  stats(): Stats {
    return { ...this.st, queued: this.q.size };
  }

  private finish(w: Waiter, err?: Error) {
    const i = this.waiters.indexOf(w);
    if (i >= 0) {
      this.waiters.splice(i, 1);
      w.done(err);
    }
  }

  private persist(r: Rec) {
    this.writes.push(r);
    if (this.writes.length > 1) return;
    queueMicrotask(() => {
      const rs = this.writes.filter((x) => this.q.has(x.id));
      this.writes = [];
      this.ready.then(() => this.store!.put(rs)).then(
        () => {
          if (!this.store!.shared) return;
          rs.forEach((x) => this.q.has(x.id) && this.persisted.add(x.id));
          if (!this.leader && this.bc) this.bc.postMessage(0);
        },
        // A full quota or blocked storage: the events stay in memory and are sent from here.
        () => {},
      );
    });
  }

  private drop(rs: Rec[]) {
    if (!rs.length) return;
    this.st.dropped += rs.length;
    this.forget(rs.map((r) => r.id));
    this.o.onDropped && this.o.onDropped(rs.map((r) => r.e), "queue_full");
  }

  private forget(ids: string[]) {
    for (const id of ids) {
      this.persisted.delete(id);
      this.sending.delete(id);
      this.gone.add(id);
    }
    if (this.gone.size > 50000) this.gone.clear();
    this.ready.then(() => this.store!.del(ids)).catch(() => {});
    for (const w of this.waiters.slice()) {
      ids.forEach((id) => w.ids.delete(id));
      if (!w.ids.size) this.finish(w);
    }
  }

  /** An answer for one event: `status` accepted or duplicate, or rejected with `errors`; `quiet` when another tab had it. */
  private settle(r: Rec | undefined, status: string, errors?: FieldError[], quiet?: boolean) {
    if (!r || !this.q.remove(r.id)) return;
    this.forget([r.id]);
    if (quiet) return;
    if (status == "accepted" || status == "duplicate") {
      this.st.delivered++;
      if (status == "duplicate") this.st.duplicates++;
      this.o.onDelivered && this.o.onDelivered(r.e, status);
    } else {
      this.st.rejected++;
      this.o.onRejected && this.o.onRejected(r.e, errors || []);
    }
  }

  private kick() {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  /** Waits before the next attempt: `ms`, or the next backoff step. */
  private pause(ms?: number, network?: boolean) {
    this.st.retries++;
    if (network) this.netFails++;
    const cap = this.netFails > 5 ? this.o.backoffLongCap : this.o.backoffCap;
    const wait = ms != null ? ms : backoff(this.attempt++, this.o.backoffBase, cap);
    this.pauseUntil = Math.max(this.pauseUntil, Date.now() + wait);
  }

  private ok() {
    this.attempt = this.netFails = 0;
  }

  private pump() {
    clearTimeout(this.idle);
    if (!this.leader || this.closed || this.st.stopped) return;
    if (!this.q.size) {
      const ws = this.ws;
      if (ws && !this.inflight.size)
        this.idle = setTimeout(() => {
          // Ours to close: not a failure, and the next event opens a new one.
          this.ws = undefined;
          this.wsReady = false;
          ws.close(1000);
        }, this.o.idleTimeout);
      return;
    }
    const wait = this.pauseUntil - Date.now();
    if (wait > 0) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.pump(), wait);
      return;
    }
    if (this.wsFails >= 2 && Date.now() < this.httpUntil) return this.http();
    if (!this.ws) return this.connect();
    if (!this.wsReady) return;
    while (this.inflight.size < this.o.window) {
      const rs = this.batch(this.maxBatch, this.maxBytes - 512);
      if (!rs.length) break;
      const id = "r" + ++this.reqSeq;
      this.inflight.set(id, rs);
      const events = rs.map((r) => r.e);
      this.ws.send(JSON.stringify(rs.length == 1 ? { type: "cart_event", requestId: id, data: events[0] } : { type: "cart_event_batch", requestId: id, data: events }));
    }
  }

  /** The next events to send, their timestamps put on the server's clock if they were not yet. */
  private batch(count: number, bytes: number): Rec[] {
    const rs = this.q.take(count, bytes, (r) => this.sending.has(r.id));
    for (const r of rs) {
      this.sending.add(r.id);
      if (!r.c && this.offsetKnown) {
        r.e.timestamp = new Date(r.t + this.offset).toISOString();
        r.c = 1;
        this.persist(r);
      }
    }
    return rs;
  }

  private clock(serverTime: string | null | undefined) {
    const at = serverTime ? Date.parse(serverTime) : NaN;
    if (at == at) {
      // An HTTP Date has whole seconds: trust it only when it says the page is off by more.
      const off = at - Date.now();
      if (serverTime!.includes("T") || Math.abs(off - this.offset) > 2000) this.offset = off;
      this.offsetKnown = true;
    }
  }

  private unsend(rs: Rec[]) {
    rs.forEach((r) => this.sending.delete(r.id));
  }

  private connect() {
    const W = this.o.WebSocket || g.WebSocket;
    const url = this.o.endpoint.replace(/^http/, "ws") + "/events/stream" + (this.o.apiKey ? "?apiKey=" + encodeURIComponent(this.o.apiKey) : "");
    let ws: WebSocket;
    try {
      ws = new W(url);
    } catch {
      this.wsFails = 2;
      this.httpUntil = Date.now() + 30000;
      return this.kick();
    }
    this.ws = ws;
    this.st.transport = "ws";
    ws.onmessage = (m) => {
      let reply: Reply;
      try {
        reply = JSON.parse(m.data as string);
      } catch {
        return;
      }
      this.reply(reply);
    };
    ws.onclose = () => {
      if (this.ws != ws) return;
      this.ws = undefined;
      this.inflight.forEach((rs) => this.unsend(rs));
      this.inflight.clear();
      if (!this.wsReady) {
        // A refused upgrade looks like any failed open (1006): after two, ask over HTTP, which says why.
        if (++this.wsFails >= 2) this.httpUntil = Date.now() + 30000;
        this.pause(undefined, true);
      } else if (!this.closed) this.pause();
      this.wsReady = false;
      this.kick();
    };
  }

  private reply(m: Reply) {
    if (m.type == "connection_ack") {
      this.wsReady = true;
      this.wsFails = 0;
      this.ok();
      this.clock(m.serverTime);
      if (m.limits) {
        this.maxBytes = m.limits.maxMessageBytes;
        this.maxBatch = m.limits.maxBatchEvents;
      }
      return this.kick();
    }
    const rs = m.requestId && this.inflight.get(m.requestId);
    if (!rs) return;
    this.inflight.delete(m.requestId!);
    this.unsend(rs);
    if (m.type == "event_ack") {
      this.ok();
      this.settle(rs[0], m.status!);
    } else if (m.type == "batch_ack") {
      this.ok();
      for (const x of m.results!) this.settle(rs[x.index], x.status, x.errors);
    } else if (m.type == "error") this.failed(rs, m.code!, !!m.retryable, m.details, m.retryAfterMs, m.message);
    this.kick();
  }

  /** A refusal of `rs` as a whole: retried later when retryable, else every event reported rejected. */
  private failed(rs: Rec[], code: string, retryable: boolean, details?: FieldError[], retryAfterMs?: number, message?: string) {
    if (code == "rate_limited") {
      this.st.rateLimited++;
      return this.pause(retryAfterMs != null ? retryAfterMs + Math.random() * 100 : undefined);
    }
    if (retryable || code == "internal_error") {
      if (code == "unavailable") this.st.unavailable++;
      return this.pause();
    }
    const errors = code == "validation_failed" && details ? details : [{ field: "", code, message: message || code }];
    rs.forEach((r) => this.settle(r, "rejected", errors));
  }

  /** One HTTP batch: when the socket cannot open, and to learn why it cannot. */
  private async http() {
    if (this.httpBusy) return;
    const rs = this.batch(this.maxBatch, 1000000);
    if (!rs.length) return;
    this.httpBusy = true;
    this.st.transport = "http";
    try {
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (this.o.apiKey) headers["x-api-key"] = this.o.apiKey;
      const res = await (this.o.fetch || g.fetch)(this.o.endpoint + "/events/batch", {
        method: "POST",
        headers,
        body: JSON.stringify({ events: rs.map((r) => r.e) }),
      });
      this.clock(res.headers.get("date"));
      const body = await res.json().catch(() => ({}));
      const status = res.status;
      if (status == 200) {
        this.ok();
        for (const x of body.results) this.settle(rs[x.index], x.status, x.errors);
      } else if (status == 401 || status == 403) {
        this.stop(body.code || String(status), body.message || "refused", status);
      } else if (status == 429 || status == 503 || status >= 500) {
        const after = Number(res.headers.get("retry-after"));
        this.failed(rs, status == 429 ? "rate_limited" : "unavailable", true, undefined, after > 0 ? after * 1000 : undefined);
      } else this.failed(rs, body.code || "http_" + status, false, body.details, undefined, body.message);
    } catch {
      this.pause(undefined, true);
    } finally {
      this.unsend(rs);
      this.httpBusy = false;
      this.kick();
    }
  }

  private stop(code: string, message: string, status?: number) {
    this.st.stopped = code;
    this.ws && this.ws.close(1000);
    this.o.onError && this.o.onError({ code, message, status });
    this.waiters.slice().forEach((w) => this.finish(w, new Error("stopped: " + code)));
  }

  /**
   * The page is going away (or hidden, which may be the last chance): hands the waiting
   * events to `navigator.sendBeacon`, within the budget. They stay queued until an ack, so
   * if the page lives on they are sent again and answered `duplicate`.
   */
  beacon() {
    const nav = g.navigator;
    if (!nav || !nav.sendBeacon || this.st.stopped || this.closed) return;
    const url = this.o.endpoint + "/events/beacon" + (this.o.apiKey ? "?apiKey=" + encodeURIComponent(this.o.apiKey) : "");
    const now = Date.now();
    // The browser frees a beacon's bytes when it has gone, which a page cannot see: count them 10 s.
    this.beacons = this.beacons.filter((b) => now - b[1] < 10000);
    let budget = this.beacons.reduce((left, b) => left - b[0], this.o.beaconBudget);
    for (;;) {
      const rs = this.q.take(this.maxBatch, Math.min(budget, 1000000) - 20, (r) => this.beaconed.has(r.id));
      if (!rs.length) return;
      const body = JSON.stringify({ events: rs.map((r) => r.e) });
      const size = utf8(body);
      if (size > budget || !nav.sendBeacon(url, body)) return;
      budget -= size;
      this.beacons.push([size, now]);
      rs.forEach((r) => this.beaconed.add(r.id));
      this.st.beaconed += rs.length;
    }
  }
}

