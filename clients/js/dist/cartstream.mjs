// src/queue.ts
var Queue = class {
  constructor(maxEvents, maxBytes) {
    this.maxEvents = maxEvents;
    this.maxBytes = maxBytes;
    this.recs = /* @__PURE__ */ new Map();
    this.bytes = 0;
  }
  get size() {
    return this.recs.size;
  }
  get(id) {
    return this.recs.get(id);
  }
  has(id) {
    return this.recs.has(id);
  }
  /** Adds records not already queued; returns the records dropped to stay in bounds. */
  add(rs) {
    let sorted = false;
    for (const r of rs) {
      if (this.recs.has(r.id)) continue;
      this.recs.set(r.id, r);
      this.bytes += r.s;
      sorted = true;
    }
    const dropped = [];
    if (!sorted || this.recs.size <= this.maxEvents && this.bytes <= this.maxBytes) return dropped;
    const all = this.ordered();
    for (const r of all) {
      if (this.recs.size <= this.maxEvents && this.bytes <= this.maxBytes) break;
      this.remove(r.id);
      dropped.push(r);
    }
    return dropped;
  }
  /** Removes an event; returns it if it was queued. */
  remove(id) {
    const r = this.recs.get(id);
    if (r) {
      this.recs.delete(id);
      this.bytes -= r.s;
    }
    return r;
  }
  /** Every record, oldest first. */
  ordered() {
    return [...this.recs.values()].sort((a, b) => a.t - b.t || a.n - b.n);
  }
  /**
   * The oldest records `skip` does not exclude, at most `count` of them and, past the first,
   * at most `bytes` together.
   */
  take(count, bytes, skip) {
    const out = [];
    let used = 0;
    for (const r of this.ordered()) {
      if (out.length >= count) break;
      if (skip(r)) continue;
      if (out.length && used + r.s + 1 > bytes) break;
      out.push(r);
      used += r.s + 1;
    }
    return out;
  }
};
function backoff(attempt, base, cap, random = Math.random) {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}

// src/store.ts
function memoryStore() {
  return {
    kind: "memory",
    shared: false,
    all: async () => [],
    put: async () => {
    },
    del: async () => {
    }
  };
}
function idb(name) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(name, 1);
    const timer = setTimeout(() => reject(new Error("IndexedDB did not open")), 3e3);
    open.onupgradeneeded = () => open.result.createObjectStore("q", { keyPath: "id" });
    open.onerror = open.onblocked = () => reject(open.error);
    open.onsuccess = () => {
      clearTimeout(timer);
      const db = open.result;
      const tx = (mode, f) => new Promise((ok, fail) => {
        const t = db.transaction("q", mode);
        const r = f(t.objectStore("q"));
        t.oncomplete = () => ok(r ? r.result : void 0);
        t.onerror = t.onabort = () => fail(t.error);
      });
      resolve({
        kind: "indexeddb",
        shared: true,
        all: () => tx("readonly", (os) => os.getAll()),
        put: (rs) => tx("readwrite", (os) => rs.forEach((r) => os.put(r))),
        del: (ids) => tx("readwrite", (os) => ids.forEach((id) => os.delete(id)))
      });
    };
  });
}
function local(name) {
  const ls = localStorage;
  const prefix = name + ":";
  const probe = prefix + "probe";
  ls.setItem(probe, "1");
  ls.removeItem(probe);
  return {
    kind: "localstorage",
    shared: true,
    all: async () => {
      const out = [];
      for (let i = 0; i < ls.length; i++) {
        const k = ls.key(i);
        if (k && k.startsWith(prefix)) {
          try {
            out.push(JSON.parse(ls.getItem(k)));
          } catch {
          }
        }
      }
      return out;
    },
    // A full quota throws here; the caller keeps the event in memory and sends it anyway.
    put: async (rs) => rs.forEach((r) => ls.setItem(prefix + r.id, JSON.stringify(r))),
    del: async (ids) => ids.forEach((id) => ls.removeItem(prefix + id))
  };
}
async function openStore(name, kinds) {
  for (const kind of kinds) {
    try {
      if (kind === "indexeddb" && typeof indexedDB == "object") return await idb(name);
      if (kind === "localstorage" && typeof localStorage == "object") return local(name);
    } catch {
    }
  }
  return memoryStore();
}

// src/client.ts
var utf8 = (s) => new TextEncoder().encode(s).length;
var g = globalThis;
function uuid() {
  const c = g.crypto;
  if (c && c.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.random() * 256 | 0;
  b[6] = b[6] & 15 | 64;
  b[8] = b[8] & 63 | 128;
  const h = [...b].map((x) => (x + 256).toString(16).slice(1)).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
var Client = class {
  constructor(options) {
    /** Server clock minus page clock, once known. */
    this.offset = 0;
    this.offsetKnown = false;
    this.seq = 0;
    this.leader = false;
    this.closed = false;
    this.wsReady = false;
    this.wsFails = 0;
    this.httpUntil = 0;
    this.httpBusy = false;
    this.maxBytes = 65536;
    this.maxBatch = 500;
    this.reqSeq = 0;
    /** Messages in flight on the socket: requestId to records. */
    this.inflight = /* @__PURE__ */ new Map();
    this.sending = /* @__PURE__ */ new Set();
    this.beaconed = /* @__PURE__ */ new Set();
    this.tab = uuid();
    /** Bytes and send times of this page's beacons: in flight (against the budget) for 10 s. */
    this.beacons = [];
    /** Persisted records of this tab (to see another tab's leader deliver them), and ids settled here. */
    this.persisted = /* @__PURE__ */ new Set();
    this.gone = /* @__PURE__ */ new Set();
    this.attempt = 0;
    this.netFails = 0;
    this.pauseUntil = 0;
    this.scheduled = false;
    this.writes = [];
    this.waiters = [];
    this.unhook = [];
    this.o = {
      maxQueueEvents: 1e4,
      maxQueueBytes: 4 << 20,
      backoffBase: 500,
      backoffCap: 3e4,
      backoffLongCap: 3e5,
      window: 16,
      beaconBudget: 6e4,
      idleTimeout: 6e4,
      ...options,
      endpoint: options.endpoint.replace(/\/+$/, "")
    };
    this.q = new Queue(this.o.maxQueueEvents, this.o.maxQueueBytes);
    this.st = { queued: 0, delivered: 0, duplicates: 0, rejected: 0, dropped: 0, retries: 0, rateLimited: 0, unavailable: 0, beaconed: 0, leader: false, storage: "", transport: "none", stopped: "" };
    const name = "cartstream:" + this.o.endpoint;
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
  async start(name) {
    this.store = this.o.store || await openStore(name, this.o.storage || ["indexeddb", "localstorage", "memory"]);
    this.st.storage = this.store.kind;
    if (this.closed) return;
    await this.unspill(name, this.store);
    if (this.closed) return;
    const sync = setInterval(() => this.sync(), 1e3);
    this.unhook.push(() => clearInterval(sync));
    if (typeof BroadcastChannel == "function") {
      const bc = this.bc = new BroadcastChannel(name);
      bc.onmessage = () => this.leader && this.sync();
      this.unhook.push(() => bc.close());
    }
    this.elect(name);
    await this.sync();
  }
  /** localStorage, when the page may use it. */
  ls(f) {
    try {
      f(localStorage);
    } catch {
    }
  }
  /** The page is hidden or going away: the beacon, and the events not yet stored written where they survive. */
  leave(name) {
    this.beacon();
    const rs = this.q.ordered().filter((r) => !this.persisted.has(r.id));
    this.ls((ls) => rs.length ? ls.setItem(name + ":spill:" + this.tab, JSON.stringify(rs.slice(-1e3))) : ls.removeItem(name + ":spill:" + this.tab));
  }
  /** Takes in what pages that went away left in localStorage. */
  async unspill(name, store) {
    const rs = [];
    this.ls((ls) => {
      for (let i = ls.length - 1; i >= 0; i--) {
        const k = ls.key(i);
        if (k.startsWith(name + ":spill:")) {
          rs.push(...JSON.parse(ls.getItem(k)));
          ls.removeItem(k);
        }
      }
    });
    if (!rs.length) return;
    if (store.shared) await store.put(rs).catch(() => this.drop(this.q.add(rs)));
    else this.drop(this.q.add(rs));
  }
  on(type, f) {
    if (typeof g.addEventListener != "function") return;
    g.addEventListener(type, f);
    this.unhook.push(() => g.removeEventListener(type, f));
  }
  /** Only one tab sends a shared queue: the holder of a Web Lock, or else of a lease in localStorage. */
  elect(name) {
    const lead = () => {
      if (this.closed) return;
      this.leader = this.st.leader = true;
      this.sync();
    };
    const locks = g.navigator && g.navigator.locks;
    if (!this.store.shared) return lead();
    if (locks) {
      locks.request(name, () => new Promise((r) => {
        if (this.closed) return r();
        this.release = r;
        lead();
      }));
      return;
    }
    const key = name + ":lease";
    const me = uuid();
    const tick = () => {
      let v = null;
      try {
        v = JSON.parse(localStorage.getItem(key) || "null");
        if (!v || v.exp < Date.now() || v.id == me) {
          if (v && v.id == me && !this.leader) lead();
          localStorage.setItem(key, JSON.stringify({ id: me, exp: Date.now() + 3e3 }));
        } else if (this.leader) {
          this.leader = this.st.leader = false;
          this.ws && this.ws.close();
        }
      } catch {
        lead();
      }
    };
    tick();
    const lease = setInterval(tick, 1e3);
    this.unhook.push(() => {
      clearInterval(lease);
      try {
        if (JSON.parse(localStorage.getItem(key) || "null").id == me) localStorage.removeItem(key);
      } catch {
      }
    });
  }
  /** Reads the shared queue: the leader takes other tabs' events, others see theirs delivered. */
  async sync() {
    const store = this.store;
    if (!store || this.closed) return;
    const known = new Set(this.persisted);
    let rs;
    try {
      rs = await store.all();
    } catch {
      return;
    }
    const ids = new Set(rs.map((r) => r.id));
    for (const id of known) {
      if (!ids.has(id) && this.q.has(id) && !this.sending.has(id)) this.settle(this.q.get(id), "", void 0, true);
    }
    if (this.leader) {
      const fresh = rs.filter((r) => !this.gone.has(r.id) && !this.q.has(r.id));
      fresh.forEach((r) => this.persisted.add(r.id));
      this.drop(this.q.add(fresh));
    }
    this.kick();
  }
  /** Tracks one event: sets its `eventId` and `timestamp` now, queues it, returns its `eventId`. */
  track(eventType, metadata, context = {}) {
    const t = Date.now();
    const e = {
      eventId: uuid(),
      userId: context.userId || this.o.userId || "",
      eventType,
      timestamp: new Date(t + this.offset).toISOString(),
      metadata: metadata || {}
    };
    const session = context.sessionId || this.o.sessionId;
    if (session) e.sessionId = session;
    const s = utf8(JSON.stringify(e));
    if (s > 6e4) {
      this.st.rejected++;
      this.o.onRejected && this.o.onRejected(e, [{ field: "", code: "too_large", message: "the event is larger than a message may be" }]);
      return e.eventId;
    }
    const r = { id: e.eventId, t, n: this.seq++, c: this.offsetKnown ? 1 : 0, s, e };
    this.drop(this.q.add([r]));
    if (this.q.has(r.id)) this.persist(r);
    this.kick();
    return e.eventId;
  }
  /** Resolves once every event tracked so far has been answered (delivered or rejected) or dropped. */
  flush(timeoutMs) {
    const ids = new Set(this.q.recs.keys());
    return new Promise((resolve, reject) => {
      if (this.st.stopped) return reject(new Error("stopped: " + this.st.stopped));
      if (!ids.size) return resolve();
      const w = { ids, done: (err) => (clearTimeout(tm), err ? reject(err) : resolve()) };
      const tm = timeoutMs ? setTimeout(() => this.finish(w, new Error("flush timed out")), timeoutMs) : void 0;
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
    this.ws && this.ws.close(1e3);
    this.waiters.slice().forEach((w) => this.finish(w, new Error("closed")));
  }
  stats() {
    return { ...this.st, queued: this.q.size };
  }
  finish(w, err) {
    const i = this.waiters.indexOf(w);
    if (i >= 0) {
      this.waiters.splice(i, 1);
      w.done(err);
    }
  }
  persist(r) {
    this.writes.push(r);
    if (this.writes.length > 1) return;
    queueMicrotask(() => {
      const rs = this.writes.filter((x) => this.q.has(x.id));
      this.writes = [];
      this.ready.then(() => this.store.put(rs)).then(
        () => {
          if (!this.store.shared) return;
          rs.forEach((x) => this.q.has(x.id) && this.persisted.add(x.id));
          if (!this.leader && this.bc) this.bc.postMessage(0);
        },
        // A full quota or blocked storage: the events stay in memory and are sent from here.
        () => {
        }
      );
    });
  }
  drop(rs) {
    if (!rs.length) return;
    this.st.dropped += rs.length;
    this.forget(rs.map((r) => r.id));
    this.o.onDropped && this.o.onDropped(rs.map((r) => r.e), "queue_full");
  }
  forget(ids) {
    for (const id of ids) {
      this.persisted.delete(id);
      this.sending.delete(id);
      this.gone.add(id);
    }
    if (this.gone.size > 5e4) this.gone.clear();
    this.ready.then(() => this.store.del(ids)).catch(() => {
    });
    for (const w of this.waiters.slice()) {
      ids.forEach((id) => w.ids.delete(id));
      if (!w.ids.size) this.finish(w);
    }
  }
  /** An answer for one event: `status` accepted or duplicate, or rejected with `errors`; `quiet` when another tab had it. */
  settle(r, status, errors, quiet) {
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
  kick() {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.pump();
    });
  }
  /** Waits before the next attempt: `ms`, or the next backoff step. */
  pause(ms, network) {
    this.st.retries++;
    if (network) this.netFails++;
    const cap = this.netFails > 5 ? this.o.backoffLongCap : this.o.backoffCap;
    const wait = ms != null ? ms : backoff(this.attempt++, this.o.backoffBase, cap);
    this.pauseUntil = Math.max(this.pauseUntil, Date.now() + wait);
  }
  ok() {
    this.attempt = this.netFails = 0;
  }
  pump() {
    clearTimeout(this.idle);
    if (!this.leader || this.closed || this.st.stopped) return;
    if (!this.q.size) {
      const ws = this.ws;
      if (ws && !this.inflight.size)
        this.idle = setTimeout(() => {
          this.ws = void 0;
          this.wsReady = false;
          ws.close(1e3);
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
  batch(count, bytes) {
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
  clock(serverTime) {
    const at = serverTime ? Date.parse(serverTime) : NaN;
    if (at == at) {
      const off = at - Date.now();
      if (serverTime.includes("T") || Math.abs(off - this.offset) > 2e3) this.offset = off;
      this.offsetKnown = true;
    }
  }
  unsend(rs) {
    rs.forEach((r) => this.sending.delete(r.id));
  }
  connect() {
    const W = this.o.WebSocket || g.WebSocket;
    const url = this.o.endpoint.replace(/^http/, "ws") + "/events/stream" + (this.o.apiKey ? "?apiKey=" + encodeURIComponent(this.o.apiKey) : "");
    let ws;
    try {
      ws = new W(url);
    } catch {
      this.wsFails = 2;
      this.httpUntil = Date.now() + 3e4;
      return this.kick();
    }
    this.ws = ws;
    this.st.transport = "ws";
    ws.onmessage = (m) => {
      let reply;
      try {
        reply = JSON.parse(m.data);
      } catch {
        return;
      }
      this.reply(reply);
    };
    ws.onclose = () => {
      if (this.ws != ws) return;
      this.ws = void 0;
      this.inflight.forEach((rs) => this.unsend(rs));
      this.inflight.clear();
      if (!this.wsReady) {
        if (++this.wsFails >= 2) this.httpUntil = Date.now() + 3e4;
        this.pause(void 0, true);
      } else if (!this.closed) this.pause();
      this.wsReady = false;
      this.kick();
    };
  }
  reply(m) {
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
    this.inflight.delete(m.requestId);
    this.unsend(rs);
    if (m.type == "event_ack") {
      this.ok();
      this.settle(rs[0], m.status);
    } else if (m.type == "batch_ack") {
      this.ok();
      for (const x of m.results) this.settle(rs[x.index], x.status, x.errors);
    } else if (m.type == "error") this.failed(rs, m.code, !!m.retryable, m.details, m.retryAfterMs, m.message);
    this.kick();
  }
  /** A refusal of `rs` as a whole: retried later when retryable, else every event reported rejected. */
  failed(rs, code, retryable, details, retryAfterMs, message) {
    if (code == "rate_limited") {
      this.st.rateLimited++;
      return this.pause(retryAfterMs != null ? retryAfterMs + Math.random() * 100 : void 0);
    }
    if (retryable || code == "internal_error") {
      if (code == "unavailable") this.st.unavailable++;
      return this.pause();
    }
    const errors = code == "validation_failed" && details ? details : [{ field: "", code, message: message || code }];
    rs.forEach((r) => this.settle(r, "rejected", errors));
  }
  /** One HTTP batch: when the socket cannot open, and to learn why it cannot. */
  async http() {
    if (this.httpBusy) return;
    const rs = this.batch(this.maxBatch, 1e6);
    if (!rs.length) return;
    this.httpBusy = true;
    this.st.transport = "http";
    try {
      const headers = { "content-type": "application/json" };
      if (this.o.apiKey) headers["x-api-key"] = this.o.apiKey;
      const res = await (this.o.fetch || g.fetch)(this.o.endpoint + "/events/batch", {
        method: "POST",
        headers,
        body: JSON.stringify({ events: rs.map((r) => r.e) })
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
        this.failed(rs, status == 429 ? "rate_limited" : "unavailable", true, void 0, after > 0 ? after * 1e3 : void 0);
      } else this.failed(rs, body.code || "http_" + status, false, body.details, void 0, body.message);
    } catch {
      this.pause(void 0, true);
    } finally {
      this.unsend(rs);
      this.httpBusy = false;
      this.kick();
    }
  }
  stop(code, message, status) {
    this.st.stopped = code;
    this.ws && this.ws.close(1e3);
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
    this.beacons = this.beacons.filter((b) => now - b[1] < 1e4);
    let budget = this.beacons.reduce((left, b) => left - b[0], this.o.beaconBudget);
    for (; ; ) {
      const rs = this.q.take(this.maxBatch, Math.min(budget, 1e6) - 20, (r) => this.beaconed.has(r.id));
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
};

// src/index.ts
var client;
function current() {
  if (!client) throw new Error("cartstream: call init({ endpoint, apiKey }) first");
  return client;
}
function init(options) {
  if (client) client.close();
  return client = new Client(options);
}
function track(eventType, metadata, context) {
  return current().track(eventType, metadata, context);
}
function flush(timeoutMs) {
  return current().flush(timeoutMs);
}
function close() {
  if (client) client.close();
  client = void 0;
}
function stats() {
  return current().stats();
}
export {
  Client,
  close,
  flush,
  init,
  stats,
  track,
  uuid
};
