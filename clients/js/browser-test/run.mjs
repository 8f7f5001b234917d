// Browser tests of the SDK in Debian's Chromium, driven by playwright-core, against a real
// cartstream started here, the page served from another origin (another port) so CORS and
// the origin allowlist are exercised. The page sends through a TCP proxy this script
// controls (Playwright's setOffline leaves open WebSockets running). Each case has its own
// time budget; screenshots and server logs go to target/browser-test/.
//
//   node browser-test/run.mjs [case ...]     (CARTSTREAM_BIN, CHROMIUM to override paths)
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const bin = process.env.CARTSTREAM_BIN || join(root, "target/debug/cartstream");
const out = join(root, "target/browser-test");
const KEY = "pk_browser_test";
const READ_KEY = "rk_browser_test";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

async function until(what, f, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out: " + what);
    await sleep(100);
  }
}

/** A cartstream process on a port and data dir of its own; restartable on both. */
class Server {
  constructor(name, env = {}, host = "127.0.0.1") {
    this.name = name;
    this.host = host;
    this.env = env;
    this.dir = mkdtempSync(join(tmpdir(), "cartstream-browser-"));
    this.starts = 0;
  }
  async start(origins) {
    this.port ??= await freePort();
    this.origins ??= origins;
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CARTSTREAM_")));
    Object.assign(env, {
      CARTSTREAM_LISTEN: `${this.host}:${this.port}`,
      CARTSTREAM_DATA_DIR: this.dir,
      CARTSTREAM_LOG: "warn",
      CARTSTREAM_API_KEYS: KEY,
      CARTSTREAM_READ_KEYS: READ_KEY,
      CARTSTREAM_CORS_ORIGINS: this.origins.join(","),
      CARTSTREAM_READ_RATE_LIMIT_PER_SECOND: "0",
      // After kill -9, a retried event the dead process had claimed is `unavailable` for this
      // long (30 s by default): shorter, so the case stays short.
      CARTSTREAM_DEDUP_HOLD: "2s",
      ...this.env,
    });
    const log = openSync(join(out, `${this.name}-server.log`), "a");
    this.proc = spawn(bin, [], { env, stdio: ["ignore", log, log] });
    this.exited = new Promise((r) => this.proc.on("exit", r));
    this.starts++;
    await until(`${this.name} server /health`, () => this.get("/health").then((r) => r.status == 200, () => false), 30000);
  }
  url(path) {
    return `http://${this.host}:${this.port}${path}`;
  }
  get(path, headers = {}) {
    return fetch(this.url(path), { headers });
  }
  async kill9() {
    this.proc.kill("SIGKILL");
    await this.exited;
  }
  async stop() {
    if (this.proc.exitCode == null && this.proc.signalCode == null) {
      this.proc.kill("SIGTERM");
      await Promise.race([this.exited, sleep(10000)]);
      this.proc.kill("SIGKILL");
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
  /** Every stored event of `userId`, following nextCursor. */
  async events(userId) {
    const ids = [];
    let cursor = "";
    for (;;) {
      const r = await this.get(`/events?userId=${encodeURIComponent(userId)}&limit=1000${cursor && "&cursor=" + encodeURIComponent(cursor)}`, { "x-api-key": READ_KEY });
      if (r.status != 200) throw new Error(`GET /events: ${r.status} ${await r.text()}`);
      const body = await r.json();
      ids.push(...body.events.map((e) => e.eventId));
      if (!body.nextCursor) return ids;
      cursor = body.nextCursor;
    }
  }
  async metric(name) {
    const text = await (await this.get("/metrics")).text();
    const line = text.split("\n").find((l) => l.startsWith(name + " "));
    return line ? Number(line.split(" ").pop()) : 0;
  }
}

/** A TCP proxy to a port: cut() resets every connection and refuses new ones until restore(). */
class Proxy {
  constructor(targetPort) {
    this.target = () => targetPort;
    this.cut = false;
    this.sockets = new Set();
  }
  async start() {
    this.connections = 0;
    this.srv = net.createServer((c) => {
      if (this.cut) return c.destroy();
      this.connections++;
      const u = net.connect(this.target(), "127.0.0.1");
      for (const [a, b] of [[c, u], [u, c]]) {
        this.sockets.add(a);
        a.on("close", () => (this.sockets.delete(a), b.destroy()));
        a.on("error", () => b.destroy());
      }
      u.pipe(c);
      // With blockWebSocket, a WebSocket upgrade is reset (plain HTTP still passes).
      c.once("data", (head) => {
        if (this.blockWebSocket && /\r\nupgrade:\s*websocket/i.test(head.toString("latin1"))) return c.destroy();
        u.write(head);
        c.pipe(u);
      });
    });
    await new Promise((r) => this.srv.listen(0, "127.0.0.1", r));
    this.port = this.srv.address().port;
    return this;
  }
  cutNow() {
    this.cut = true;
    for (const s of this.sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
  }
  restore() {
    this.cut = false;
  }
  close() {
    this.cutNow();
    this.srv.close();
  }
}

/** Serves the test pages and the demo shop: the page's origin, another port than the server's. */
async function pageServer(host) {
  const files = {
    "/page.html": join(here, "page.html"),
    "/blank.html": join(here, "blank.html"),
    "/shop/": join(root, "examples/shop/index.html"),
  };
  const srv = http.createServer((req, res) => {
    const file = files[new URL(req.url, "http://x").pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(readFileSync(file));
  });
  await new Promise((r) => srv.listen(0, host, r));
  return { srv, origin: `http://${host}:${srv.address().port}` };
}

function once(tracked, stored) {
  const count = new Map();
  for (const id of stored) count.set(id, (count.get(id) || 0) + 1);
  const missing = tracked.filter((id) => !count.has(id));
  const twice = [...count].filter(([, n]) => n > 1).map(([id]) => id);
  const extra = stored.filter((id) => !tracked.includes(id));
  if (missing.length || twice.length || extra.length)
    throw new Error(`stored events: ${missing.length} of ${tracked.length} missing, ${twice.length} twice, ${extra.length} not tracked`);
  return `${tracked.length} tracked, each stored exactly once`;
}

let seq = 0;
const user = (name) => `browser-${name}-${process.pid}-${++seq}`;

/** A page of `origin` with the SDK loaded from `server`, sending to `endpoint`. */
async function openPage(context, origin, server, endpoint, userId, extra = {}) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log("  page error:", e.message));
  const q = new URLSearchParams({ sdk: server.url("/sdk/v1/cartstream.min.js"), endpoint, key: KEY, user: userId, ...extra });
  await page.goto(`${origin}/page.html?${q}`);
  await page.evaluate(() => window.ready);
  return page;
}

const trackMany = (page, n, type = "item_added") =>
  page.evaluate(
    ([n, type]) => Array.from({ length: n }, (_, i) => cartstream.track(type, { productId: "sku-" + i, quantity: 1 + (i % 3), price: 9.99, currency: "EUR" })),
    [n, type],
  );
const flush = (page, ms) => page.evaluate((ms) => cartstream.flush(ms), ms);
const stats = (page) => page.evaluate(() => cartstream.stats());

// ---- the cases ----

const cases = {
  /** 1,000 events tracked on a page: every one in GET /events exactly once. */
  async thousand({ context, origin, server }) {
    const u = user("thousand");
    const page = await openPage(context, origin, server, server.url(""), u);
    const ids = await trackMany(page, 1000);
    await flush(page, 60000);
    const s = await stats(page);
    await page.close();
    return `${once(ids, await server.events(u))}; ${s.delivered} delivered (${s.duplicates} duplicate), storage ${s.storage}, transport ${s.transport}`;
  },

  /** The network cut (a TCP proxy reset) while 200 events are tracked, then restored. */
  async cut({ context, origin, server }) {
    const proxy = await new Proxy(server.port).start();
    const u = user("cut");
    const page = await openPage(context, origin, server, `http://127.0.0.1:${proxy.port}`, u, { cap: "4000" });
    const ids = await trackMany(page, 100);
    await sleep(20);
    proxy.cutNow();
    ids.push(...(await trackMany(page, 100)));
    await sleep(3000);
    const during = await stats(page);
    proxy.restore();
    await flush(page, 60000);
    const s = await stats(page);
    await page.close();
    proxy.close();
    return `${once(ids, await server.events(u))}; ${during.queued} waiting during the 3 s cut, ${s.retries} retries, ${s.duplicates} answered duplicate`;
  },

  /** cartstream killed with kill -9 mid-stream and restarted on the same data dir. */
  async kill9({ context, origin, server }) {
    const u = user("kill9");
    const page = await openPage(context, origin, server, server.url(""), u, { cap: "4000" });
    // 300 events, 10 every 20 ms, the server killed after about a third.
    const tracking = page.evaluate(async () => {
      const ids = [];
      for (let i = 0; i < 30; i++) {
        for (let j = 0; j < 10; j++) ids.push(cartstream.track("cart_viewed", { itemCount: j }));
        await new Promise((r) => setTimeout(r, 20));
      }
      return ids;
    });
    await sleep(200);
    const atKill = await stats(page);
    await server.kill9();
    await sleep(1000);
    await server.start();
    const ids = await tracking;
    await flush(page, 60000);
    const s = await stats(page);
    await page.close();
    return `${once(ids, await server.events(u))}; killed with ${atKill.delivered} delivered and ${atKill.queued} waiting, then ${s.retries} retries, ${s.duplicates} answered duplicate, ${s.unavailable} unavailable`;
  },

  /** A reload with events still queued (the network cut): delivered after the reload. */
  async reload({ context, origin, server }) {
    const proxy = await new Proxy(server.port).start();
    proxy.cutNow();
    const u = user("reload");
    const page = await openPage(context, origin, server, `http://127.0.0.1:${proxy.port}`, u, { cap: "2000" });
    const ids = await trackMany(page, 50, "item_removed");
    await sleep(500);
    const before = await stats(page);
    await page.reload();
    await page.evaluate(() => window.ready);
    await sleep(500);
    const queued = (await stats(page)).queued;
    proxy.restore();
    await flush(page, 60000);
    await page.close();
    proxy.close();
    if (queued != 50) throw new Error(`after the reload ${queued} events queued, not 50`);
    return `${once(ids, await server.events(u))}; ${queued} queued in ${before.storage} across the reload`;
  },

  /**
   * track() immediately followed by navigating away: the events are not lost with the page.
   * With the socket open they may leave over it before the page does, or through the beacon
   * on pagehide; either way each is stored once. (The beacon alone, the socket refused, is the
   * `beacon-refused` case, and `beaconbudget` for its budget.)
   */
  async beacon({ context, origin, server }) {
    const u = user("beacon");
    const page = await openPage(context, origin, server, server.url(""), u);
    const httpBefore = await server.metric('cartstream_events_received_total{channel="http"}');
    const ids = await page.evaluate((next) => {
      const ids = [0, 1, 2, 3, 4].map((i) => cartstream.track("checkout_started", { cartValue: 10 * i, itemCount: i }));
      location.href = next;
      return ids;
    }, `${origin}/blank.html`);
    await page.waitForURL(/blank/);
    const stored = await until("the events stored", async () => {
      const got = await server.events(u);
      return got.length >= ids.length && got;
    }, 15000);
    const viaHttp = (await server.metric('cartstream_events_received_total{channel="http"}')) - httpBefore;
    await page.close();
    return `${once(ids, stored)}; ${viaHttp} received through the beacon, the rest over the socket before the page left`;
  },

  /**
   * track() then navigating away at once with the WebSocket refused (the proxy resets every
   * upgrade): nothing can deliver the events but what the page does on its way out, and no
   * later visit comes to resend them. Each of them must be stored exactly once all the same, at
   * four moments: in the task that called init() (before the SDK has opened its storage or
   * been granted the tabs' lock), right after the script loaded, once the page is the sending
   * tab, and while the HTTP fallback (the socket refused twice) has a batch of them in flight.
   */
  async "beacon-refused"({ context, origin, server }) {
    const metric = 'cartstream_events_received_total{channel="http"}';
    const said = [];
    for (const when of ["init", "loaded", "leader", "http"]) {
      const proxy = await new Proxy(server.port).start();
      proxy.blockWebSocket = true;
      const endpoint = `http://127.0.0.1:${proxy.port}`;
      const u = user("refused-" + when);
      const next = `${origin}/blank.html`;
      const httpBefore = await server.metric(metric);
      let page, ids;
      if (when == "init") {
        page = await context.newPage();
        const q = new URLSearchParams({ sdk: server.url("/sdk/v1/cartstream.min.js"), endpoint, key: KEY, user: u, track: "5", next });
        await page.goto(`${origin}/page.html?${q}`, { waitUntil: "commit" });
        await page.waitForURL(/blank/);
        ids = JSON.parse(await page.evaluate(() => sessionStorage.getItem("tracked")));
      } else {
        page = await openPage(context, origin, server, endpoint, u);
        ids = [];
        if (when == "leader") await until("the page leads", async () => (await stats(page)).leader, 5000);
        if (when == "http") {
          ids.push(...(await trackMany(page, 1, "cart_viewed")));
          await until("a delivery over the HTTP fallback", async () => ((s) => s.transport == "http" && s.delivered == 1)(await stats(page)), 10000);
        }
        ids.push(
          ...(await page.evaluate((next) => {
            const ids = [0, 1, 2, 3, 4].map((i) => cartstream.track("checkout_started", { cartValue: 10 * i, itemCount: i }));
            location.href = next;
            return ids;
          }, next)),
        );
        await page.waitForURL(/blank/);
      }
      const at = JSON.parse((await page.evaluate(() => sessionStorage.getItem("atPagehide"))) || "null");
      await page.close();
      const seen = (s) => (s ? `storage ${s.storage || "not yet open"}, leader ${s.leader}, transport ${s.transport}, ${s.queued} queued` : "no stats");
      try {
        await until("every event stored", async () => (await server.events(u)).length >= ids.length, 10000);
        // Anything sent twice would be stored by now.
        await sleep(500);
        const stored = await server.events(u);
        said.push(`${when}: ${once(ids, stored)}, ${(await server.metric(metric)) - httpBefore} received over HTTP (at pagehide: ${seen(at)})`);
      } catch (e) {
        throw new Error(`${when}: ${e.message} (${(await server.events(u)).length} of ${ids.length} stored; at pagehide: ${seen(at)})`);
      } finally {
        proxy.close();
      }
    }
    return said.join("; ");
  },

  /**
   * 300 events of 1 KB tracked right before navigating away, the WebSocket blocked: the
   * beacon carries what fits its 60 KB budget, the rest stay queued (IndexedDB, or the
   * localStorage spill written on pagehide) and are delivered on the next visit, the beaconed
   * ones again as harmless duplicates.
   */
  async beaconbudget({ context, origin, server }) {
    const proxy = await new Proxy(server.port).start();
    proxy.blockWebSocket = true;
    const u = user("budget");
    // A long backoff: no HTTP fallback before the page is gone, only the beacon.
    const extra = { base: "60000" };
    const page = await openPage(context, origin, server, `http://127.0.0.1:${proxy.port}`, u, extra);
    const metric = 'cartstream_events_received_total{channel="http"}';
    const httpBefore = await server.metric(metric);
    const ids = await page.evaluate((next) => {
      const ids = Array.from({ length: 300 }, (_, i) => cartstream.track("item_added", { productId: "sku-" + i, note: "x".repeat(1000) }));
      location.href = next;
      return ids;
    }, `${origin}/blank.html`);
    await page.waitForURL(/blank/);
    const viaBeacon = await until("the beacon", async () => (await server.metric(metric)) - httpBefore, 10000);
    await sleep(1000);
    const storedThen = (await server.events(u)).length;
    if (viaBeacon * 1100 > 60000) throw new Error(`${viaBeacon} events of about 1.1 KB went through the beacon`);
    if (storedThen != viaBeacon) throw new Error(`${storedThen} stored after the unload, ${viaBeacon} beaconed`);
    proxy.blockWebSocket = false;
    const q = new URLSearchParams({ sdk: server.url("/sdk/v1/cartstream.min.js"), endpoint: `http://127.0.0.1:${proxy.port}`, key: KEY, user: u });
    await page.goto(`${origin}/page.html?${q}`);
    await page.evaluate(() => window.ready);
    // No wait for "the queue loaded": on an idle machine the next visit can deliver the whole
    // queue before a first look at it. The events below can only come from that queue (this
    // visit tracks nothing), and `delivered` counts them.
    await until("every event stored", async () => (await server.events(u)).length >= ids.length, 30000);
    await flush(page, 30000);
    const s = await stats(page);
    await page.close();
    proxy.close();
    return `${once(ids, await server.events(u))}; ${viaBeacon} events (under 60 KB) went through the beacon and only those were stored at once; the next visit delivered ${s.delivered} from the queue, ${s.duplicates} of them answered duplicate`;
  },

  /**
   * The localStorage queue (where IndexedDB is blocked): events queued across a reload are
   * delivered; then, with localStorage full, track() neither throws nor loses an event.
   */
  async localstorage({ context, origin, server }) {
    const proxy = await new Proxy(server.port).start();
    proxy.cutNow();
    const u = user("localstorage");
    const extra = { cap: "2000", storage: "localstorage" };
    const page = await openPage(context, origin, server, `http://127.0.0.1:${proxy.port}`, u, extra);
    const ids = await trackMany(page, 50, "item_added");
    await sleep(300);
    await page.reload();
    await page.evaluate(() => window.ready);
    await sleep(300);
    const s1 = await stats(page);
    if (s1.storage != "localstorage" || s1.queued != 50) throw new Error(`after the reload: ${s1.queued} queued in ${s1.storage}`);
    proxy.restore();
    await flush(page, 30000);
    // Fill localStorage to its quota, then track: nothing thrown, every event delivered.
    const filled = await page.evaluate(() => {
      let n = 0;
      const chunk = "x".repeat(256 * 1024);
      try {
        for (;;) localStorage.setItem("filler-" + n++, chunk);
      } catch {}
      let small = 0;
      try {
        for (;;) localStorage.setItem("filler-small-" + small++, "x".repeat(1024));
      } catch {}
      return n * 256 + small;
    });
    const more = await trackMany(page, 50, "item_removed");
    await flush(page, 30000);
    const s2 = await stats(page);
    await page.evaluate(() => localStorage.clear());
    await page.close();
    proxy.close();
    const errors = s2.dropped + s2.rejected;
    if (errors) throw new Error(`${s2.dropped} dropped, ${s2.rejected} rejected`);
    return `${once([...ids, ...more], await server.events(u))}; 50 queued in localStorage across a reload, then 50 tracked with localStorage full (about ${Math.round(filled / 1024)} MB of filler): no exception, all delivered`;
  },

  /** A key the server does not know: two refused upgrades, one HTTP batch answered 401, then nothing more. */
  async unauthorized({ context, origin, server }) {
    const proxy = await new Proxy(server.port).start();
    const page = await openPage(context, origin, server, `http://127.0.0.1:${proxy.port}`, user("unauthorized"), { key: "pk_unknown" });
    await trackMany(page, 3, "cart_viewed");
    await until("the SDK stops", async () => (await stats(page)).stopped, 20000);
    const log = await page.evaluate(() => window.log);
    const error = log.find((l) => l[0] == "error");
    if (!error || error[1].status != 401) throw new Error(`reported: ${JSON.stringify(log)}`);
    const connections = proxy.connections;
    await sleep(3000);
    const s = await stats(page);
    await page.close();
    proxy.close();
    if (proxy.connections != connections) throw new Error(`${proxy.connections - connections} more connections after stopping`);
    if (s.queued != 3) throw new Error(`${s.queued} events queued, not 3`);
    return `stopped with onError(${error[1].code}, 401) after ${connections} connections, none in the next 3 s; the 3 events kept queued`;
  },

  /** Two tabs tracking into one queue, the sending tab closed half-way: no duplicates. */
  async tabs({ context, origin, server }) {
    const proxy = await new Proxy(server.port).start();
    const endpoint = `http://127.0.0.1:${proxy.port}`;
    const u = user("tabs");
    const a = await openPage(context, origin, server, endpoint, u, { cap: "2000" });
    const b = await openPage(context, origin, server, endpoint, u, { cap: "2000" });
    await sleep(300);
    const leaders = [(await stats(a)).leader, (await stats(b)).leader];
    if (leaders.filter(Boolean).length != 1) throw new Error(`leaders: ${leaders}`);
    // Both tabs track while the network is cut, so the queue holds both tabs' events.
    proxy.cutNow();
    const ids = [...(await trackMany(a, 150)), ...(await trackMany(b, 150))];
    await sleep(1500);
    const [leader, other] = leaders[0] ? [a, b] : [b, a];
    const queued = (await stats(leader)).queued;
    await leader.close();
    proxy.restore();
    ids.push(...(await trackMany(other, 100)));
    await until("the other tab leads", async () => (await stats(other)).leader, 10000);
    await flush(other, 60000);
    await until("every event stored", async () => (await server.events(u)).length >= ids.length, 20000);
    await sleep(1500);
    const s = await stats(other);
    await other.close();
    proxy.close();
    return `${once(ids, await server.events(u))}; the sending tab held ${queued} of both tabs' events when closed, the other took over and sent them (${s.duplicates} answered duplicate)`;
  },

  /**
   * init() called again in a tab that waits for the sending tab's lock: when that tab closes,
   * the closed client's lock is handed on and the new one sends.
   */
  async reinit({ context, origin, server }) {
    const u = user("reinit");
    const a = await openPage(context, origin, server, server.url(""), u);
    await until("a leads", async () => (await stats(a)).leader, 5000);
    const b = await openPage(context, origin, server, server.url(""), u);
    const ids = await b.evaluate(
      ([endpoint, key, user]) => {
        cartstream.init({ endpoint, apiKey: key, userId: user });
        return Array.from({ length: 50 }, (_, i) => cartstream.track("cart_viewed", { itemCount: i }));
      },
      [server.url(""), KEY, u],
    );
    await a.close();
    await until("b leads", async () => (await stats(b)).leader, 10000);
    await flush(b, 30000);
    await b.close();
    return `${once(ids, await server.events(u))}; the re-initialised tab took the lock over when the sending tab closed`;
  },

  /** The server answering rate_limited: backoff by retryAfterMs observed, then delivery. */
  async ratelimited({ context, origin, rateServer }) {
    const u = user("rate");
    const page = await openPage(context, origin, rateServer, rateServer.url(""), u);
    const started = Date.now();
    const ids = await trackMany(page, 100, "cart_cleared");
    await flush(page, 60000);
    const took = Date.now() - started;
    const s = await stats(page);
    await page.close();
    if (!s.rateLimited) throw new Error("never answered rate_limited");
    return `${once(ids, await rateServer.events(u))}; ${s.rateLimited} rate_limited answers waited out, all delivered in ${took} ms at 20 events/s`;
  },

  /** The server answering unavailable (Redis cut under fail_closed): backoff, then delivery. */
  async unavailable({ context, origin, redisProxy, unavailableServer }) {
    if (!redisProxy) {
      if (process.env.CI == "true") throw new Error("Redis is not reachable on 127.0.0.1:6379");
      return "SKIPPED: Redis is not reachable on 127.0.0.1:6379";
    }
    const u = user("unavailable");
    const server = unavailableServer;
    const page = await openPage(context, origin, server, server.url(""), u, { cap: "2000" });
    redisProxy.cutNow();
    const ids = await trackMany(page, 50, "cart_viewed");
    await until("unavailable answers", async () => (await stats(page)).unavailable >= 2, 15000);
    redisProxy.restore();
    await flush(page, 60000);
    const s = await stats(page);
    await page.close();
    return `${once(ids, await server.events(u))}; ${s.unavailable} unavailable answers, ${s.retries} retries, then delivered`;
  },

  /**
   * A plain-http page that is not a secure context (no crypto.randomUUID, no Web Locks): the
   * page and the server on a non-loopback address. Two tabs share the queue through the
   * localStorage lease; every event is stored once, with a v4 UUID for its id.
   */
  async insecure({ context, insecure }) {
    if (!insecure) return "SKIPPED: no non-loopback IPv4 address to serve a non-secure page from";
    const { server, origin } = insecure;
    const u = user("insecure");
    const a = await openPage(context, origin, server, server.url(""), u, { cap: "2000" });
    const b = await openPage(context, origin, server, server.url(""), u, { cap: "2000" });
    const env = await a.evaluate(() => ({ secure: isSecureContext, uuid: !!(crypto && crypto.randomUUID), locks: !!navigator.locks }));
    if (env.secure || env.uuid || env.locks) throw new Error(`the page is a secure context after all: ${JSON.stringify(env)}`);
    await sleep(2500);
    const leaders = [(await stats(a)).leader, (await stats(b)).leader];
    if (leaders.filter(Boolean).length != 1) throw new Error(`leaders: ${leaders}`);
    const ids = [...(await trackMany(a, 100)), ...(await trackMany(b, 100))];
    if (!ids.every((id) => /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id))) throw new Error("an eventId is not a v4 UUID");
    await flush(a, 30000);
    await flush(b, 30000);
    const s = await stats(leaders[0] ? a : b);
    await a.close();
    await b.close();
    return `${once(ids, await server.events(u))}; isSecureContext false, no randomUUID, no Web Locks: one leader by the localStorage lease, storage ${s.storage}`;
  },

  /** The demo shop, clicked through; screenshots in target/browser-test/. */
  async demo({ context, origin, server }) {
    const page = await context.newPage();
    const q = new URLSearchParams({ sdk: server.url("/sdk/v1/cartstream.min.js"), endpoint: server.url(""), key: KEY });
    await page.goto(`${origin}/shop/?${q}`);
    await page.waitForFunction(() => window.shopReady);
    await page.screenshot({ path: join(out, "demo-shop.png"), fullPage: true });
    for (const b of await page.locator("button.add").all()) await b.click();
    await page.locator("#checkout").click();
    // cart_viewed, three item_added, checkout_started and checkout_completed.
    await page.waitForFunction(() => /all delivered \| tracked 6,/.test(document.querySelector("#status").textContent), null, { timeout: 20000 });
    await page.screenshot({ path: join(out, "demo-shop-checkout.png"), fullPage: true });
    const u = await page.evaluate(() => window.shopUser);
    const tracked = await page.evaluate(() => window.shopTracked);
    await page.close();
    return `${once(tracked, await server.events(u))}; screenshots demo-shop.png, demo-shop-checkout.png`;
  },
};

const budgets = { "beacon-refused": 60, reinit: 40, localstorage: 60, beaconbudget: 60, unauthorized: 60, insecure: 60, thousand: 90, cut: 90, kill9: 120, reload: 60, beacon: 40, tabs: 90, ratelimited: 60, unavailable: 60, demo: 40 };

async function redisUp() {
  return new Promise((r) => {
    const s = net.connect(6379, "127.0.0.1", () => (s.destroy(), r(true)));
    s.on("error", () => r(false));
  });
}

async function main() {
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const wanted = process.argv.slice(2);
  const names = Object.keys(cases).filter((n) => !wanted.length || wanted.includes(n));
  const pages = await pageServer("127.0.0.1");
  const origins = [pages.origin];
  const server = new Server("main");
  await server.start(origins);
  // The pages load the SDK the binary embeds: it must be this checkout's build.
  const served = Buffer.from(await (await server.get("/sdk/v1/cartstream.min.js")).arrayBuffer());
  if (!served.equals(readFileSync(join(here, "../dist/cartstream.min.js")))) {
    await server.stop();
    throw new Error(`${bin} serves another build of the SDK than clients/js/dist: cargo build first`);
  }
  // Small batches and 20 events/s per client: 100 events take about 5 s of rate_limited.
  const rateServer = new Server("rate", {
    CARTSTREAM_MAX_BATCH_EVENTS: "10",
    CARTSTREAM_RATE_LIMIT_PER_SECOND: "20",
    CARTSTREAM_RATE_LIMIT_BURST: "10",
  });
  await rateServer.start(origins);
  let redisProxy, unavailableServer;
  if (await redisUp()) {
    redisProxy = await new Proxy(6379).start();
    unavailableServer = new Server("unavailable", {
      CARTSTREAM_REDIS_URL: `redis://127.0.0.1:${redisProxy.port}`,
      CARTSTREAM_REDIS_KEY_PREFIX: `cartstream-browser-${process.pid}-${Date.now()}:`,
      CARTSTREAM_DEDUP_OUTAGE: "fail_closed",
      CARTSTREAM_REDIS_COMMAND_TIMEOUT: "500ms",
      CARTSTREAM_REDIS_CONNECT_TIMEOUT: "500ms",
    });
    await unavailableServer.start(origins);
  }
  // A non-secure context needs a page on an address that is not loopback.
  let insecure;
  const ip = Object.values(networkInterfaces()).flat().find((i) => i && i.family == "IPv4" && !i.internal);
  if (ip && names.includes("insecure")) {
    const pages2 = await pageServer(ip.address);
    const server2 = new Server("insecure", {}, ip.address);
    await server2.start([pages2.origin]);
    insecure = { server: server2, origin: pages2.origin, pages: pages2 };
  }
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  let failed = 0;
  const started = Date.now();
  for (const name of names) {
    const context = await browser.newContext();
    const t = Date.now();
    let timer;
    try {
      const budget = budgets[name] * 1000;
      const result = await Promise.race([
        cases[name]({ context, origin: pages.origin, server, rateServer, redisProxy, unavailableServer, insecure }),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`over its budget of ${budget / 1000} s`)), budget))),
      ]);
      console.log(`case ${name}: ok in ${((Date.now() - t) / 1000).toFixed(1)} s: ${result}`);
    } catch (e) {
      failed++;
      console.log(`case ${name}: FAILED after ${((Date.now() - t) / 1000).toFixed(1)} s: ${e.message}`);
    } finally {
      clearTimeout(timer);
      await context.close().catch(() => {});
    }
  }
  await browser.close();
  for (const s of [server, rateServer, unavailableServer, insecure && insecure.server]) if (s) await s.stop();
  if (insecure) insecure.pages.srv.close();
  if (redisProxy) redisProxy.close();
  pages.srv.close();
  console.log(`browser tests: ${names.length - failed} passed, ${failed} failed, in ${((Date.now() - started) / 1000).toFixed(1)} s (logs and screenshots in ${out})`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
