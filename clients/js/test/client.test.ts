import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, type Options } from "../src/client";
import { memoryStore } from "../src/store";
import type { CartEvent, FieldError } from "../src/types";

/** A WebSocket the test drives: it records what the client sends and answers as told. */
class FakeSocket {
  static all: FakeSocket[] = [];
  sent: any[] = [];
  onmessage?: (m: { data: string }) => void;
  onclose?: () => void;
  closed = false;
  constructor(public url: string) {
    FakeSocket.all.push(this);
  }
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.closed = true;
  }
  ack(limits = { maxMessageBytes: 65536, maxBatchEvents: 500 }, serverTime = new Date().toISOString()) {
    this.onmessage!({ data: JSON.stringify({ type: "connection_ack", connectionId: "c", protocolVersion: 1, serverTime, limits }) });
  }
  reply(m: object) {
    this.onmessage!({ data: JSON.stringify(m) });
  }
  drop() {
    this.onclose!();
  }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
async function until(f: () => boolean, ms = 3000) {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error("timed out waiting");
    await tick(5);
  }
}

function client(extra: Partial<Options> = {}) {
  FakeSocket.all = [];
  const seen = { delivered: [] as [CartEvent, string][], rejected: [] as [CartEvent, FieldError[]][], dropped: [] as CartEvent[], errors: [] as any[] };
  const c = new Client({
    endpoint: "http://cs.test/",
    apiKey: "pk 1",
    userId: "u1",
    store: memoryStore(),
    WebSocket: FakeSocket as any,
    backoffBase: 20,
    backoffCap: 50,
    onDelivered: (e, s) => seen.delivered.push([e, s]),
    onRejected: (e, errs) => seen.rejected.push([e, errs]),
    onDropped: (es) => seen.dropped.push(...es),
    onError: (e) => seen.errors.push(e),
    ...extra,
  });
  return { c, seen };
}

async function opened() {
  await until(() => FakeSocket.all.length > 0);
  return FakeSocket.all[FakeSocket.all.length - 1];
}

test("one socket, the key in its URL; several waiting events go as one batch, one alone as cart_event", async () => {
  const { c, seen } = client();
  c.track("item_added", { productId: "p1" });
  c.track("item_added", { productId: "p2" });
  c.track("cart_viewed");
  const ws = await opened();
  assert.equal(ws.url, "ws://cs.test/events/stream?apiKey=pk%201");
  ws.ack();
  await until(() => ws.sent.length == 1);
  const m = ws.sent[0];
  assert.equal(m.type, "cart_event_batch");
  assert.deepEqual(m.data.map((e: CartEvent) => e.metadata.productId), ["p1", "p2", undefined]);
  ws.reply({ type: "batch_ack", requestId: m.requestId, accepted: 2, duplicates: 1, rejected: 0, results: m.data.map((e: CartEvent, index: number) => ({ index, eventId: e.eventId, status: index == 1 ? "duplicate" : "accepted" })) });
  const id = c.track("cart_cleared", {}, { userId: "u2", sessionId: "s" });
  await until(() => ws.sent.length == 2);
  assert.equal(ws.sent[1].type, "cart_event");
  assert.equal(ws.sent[1].data.eventId, id);
  assert.equal(ws.sent[1].data.userId, "u2");
  assert.equal(ws.sent[1].data.sessionId, "s");
  ws.reply({ type: "event_ack", requestId: ws.sent[1].requestId, eventId: id, status: "accepted" });
  await c.flush(1000);
  // A duplicate is delivered: its eventId was recorded before.
  assert.deepEqual(seen.delivered.map(([, s]) => s), ["accepted", "duplicate", "accepted", "accepted"]);
  assert.equal(c.stats().queued, 0);
  assert.equal(FakeSocket.all.length, 1);
  c.close();
});

test("batches respect connection_ack's limits and are pipelined", async () => {
  const { c } = client();
  for (let i = 0; i < 7; i++) c.track("item_added", { productId: "p" + i });
  const ws = await opened();
  ws.ack({ maxMessageBytes: 65536, maxBatchEvents: 3 });
  await until(() => ws.sent.length == 3);
  assert.deepEqual(ws.sent.map((m) => (m.type == "cart_event" ? 1 : m.data.length)), [3, 3, 1]);
  // Bytes too: events of ~1 KB in messages of at most 2.5 KB (less the envelope's margin).
  const { c: c2 } = client();
  for (let i = 0; i < 4; i++) c2.track("item_added", { productId: "p", pad: "x".repeat(1000) });
  const ws2 = await opened();
  ws2.ack({ maxMessageBytes: 3000, maxBatchEvents: 500 });
  await until(() => ws2.sent.length == 2);
  assert.deepEqual(ws2.sent.map((m) => m.data.length), [2, 2]);
  c.close();
  c2.close();
});

test("a rejected event is reported with its errors and never sent again", async () => {
  const { c, seen } = client();
  c.track("item_added", {} as any);
  const ws = await opened();
  ws.ack();
  await until(() => ws.sent.length == 1);
  const details = [{ field: "metadata.productId", code: "required", message: "metadata.productId is required for item_added" }];
  ws.reply({ type: "error", requestId: ws.sent[0].requestId, code: "validation_failed", message: "event is invalid", details, retryable: false });
  await c.flush(1000);
  assert.equal(seen.rejected.length, 1);
  assert.deepEqual(seen.rejected[0][1], details);
  await tick(100);
  assert.equal(ws.sent.length, 1);
  c.close();
});

test("unavailable is retried after a backoff with the same eventId and timestamp", async () => {
  const { c, seen } = client();
  c.track("cart_viewed");
  const ws = await opened();
  ws.ack();
  await until(() => ws.sent.length == 1);
  ws.reply({ type: "error", requestId: ws.sent[0].requestId, code: "unavailable", message: "journal full", retryable: true });
  await until(() => ws.sent.length == 2);
  assert.deepEqual(ws.sent[1].data, ws.sent[0].data);
  ws.reply({ type: "error", requestId: ws.sent[1].requestId, code: "internal_error", message: "oops", retryable: false });
  await until(() => ws.sent.length == 3);
  assert.deepEqual(ws.sent[2].data, ws.sent[0].data);
  ws.reply({ type: "event_ack", requestId: ws.sent[2].requestId, eventId: ws.sent[0].data.eventId, status: "accepted" });
  await c.flush(1000);
  assert.equal(seen.delivered.length, 1);
  assert.equal(c.stats().unavailable, 1);
  c.close();
});

test("rate_limited waits retryAfterMs before sending again", async () => {
  const { c } = client();
  c.track("cart_viewed");
  const ws = await opened();
  ws.ack();
  await until(() => ws.sent.length == 1);
  ws.reply({ type: "error", requestId: ws.sent[0].requestId, code: "rate_limited", message: "slow down", retryable: true, retryAfterMs: 400 });
  await tick(200);
  assert.equal(ws.sent.length, 1, "sent again before retryAfterMs");
  await until(() => ws.sent.length == 2);
  assert.equal(ws.sent[1].data.eventId, ws.sent[0].data.eventId);
  assert.equal(c.stats().rateLimited, 1);
  c.close();
});

test("timestamps are put on the server's clock from connection_ack", async () => {
  const { c } = client();
  const ahead = 10 * 60 * 1000;
  const before = Date.now();
  c.track("cart_viewed");
  const ws = await opened();
  ws.ack(undefined, new Date(Date.now() + ahead).toISOString());
  await until(() => ws.sent.length == 1);
  const skew = (m: any) => Date.parse(m.data.timestamp) - before - ahead;
  assert.ok(Math.abs(skew(ws.sent[0])) < 1000, `tracked before the ack: off by ${skew(ws.sent[0])} ms`);
  ws.reply({ type: "event_ack", requestId: ws.sent[0].requestId, status: "accepted" });
  c.track("cart_viewed");
  await until(() => ws.sent.length == 2);
  assert.ok(Math.abs(skew(ws.sent[1])) < 1000, `tracked after the ack: off by ${skew(ws.sent[1])} ms`);
  c.close();
});

test("a lost connection resends what was unanswered, with the same ids, on a new socket", async () => {
  const { c, seen } = client();
  c.track("cart_viewed");
  c.track("cart_cleared");
  const ws = await opened();
  ws.ack();
  await until(() => ws.sent.length == 1);
  ws.drop();
  await until(() => FakeSocket.all.length == 2);
  const ws2 = FakeSocket.all[1];
  ws2.ack();
  await until(() => ws2.sent.length == 1);
  assert.deepEqual(ws2.sent[0].data, ws.sent[0].data);
  ws2.reply({ type: "batch_ack", requestId: ws2.sent[0].requestId, results: [{ index: 0, status: "duplicate" }, { index: 1, status: "accepted" }] });
  await c.flush(1000);
  assert.equal(seen.delivered.length, 2);
  c.close();
});

test("after two failed opens it asks over HTTP; 401 stops sending and is reported", async () => {
  const calls: any[] = [];
  const fetch = async (url: string, init: any) => {
    calls.push({ url, init });
    return new Response(JSON.stringify({ code: "unauthorized", message: "no such key", retryable: false }), { status: 401, headers: { "content-type": "application/json" } });
  };
  const { c, seen } = client({ fetch: fetch as any });
  c.track("cart_viewed");
  (await opened()).drop();
  await until(() => FakeSocket.all.length == 2);
  const flushed = c.flush(2000);
  FakeSocket.all[1].drop();
  await assert.rejects(flushed, /stopped: unauthorized/);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].url, "http://cs.test/events/batch");
  assert.equal(calls[0].init.headers["x-api-key"], "pk 1");
  assert.deepEqual(seen.errors, [{ code: "unauthorized", message: "no such key", status: 401 }]);
  assert.equal(c.stats().queued, 1, "kept for a later page with a good key");
  await tick(100);
  assert.equal(FakeSocket.all.length, 2);
  c.close();
});

test("over HTTP: results settle each event, 429 honours Retry-After, Date corrects the clock", async () => {
  const answers: Response[] = [
    new Response("{}", { status: 429, headers: { "retry-after": "1" } }),
  ];
  const calls: any[] = [];
  const fetch = async (_url: string, init: any) => {
    const body = JSON.parse(init.body);
    calls.push({ at: Date.now(), body });
    return (
      answers.shift() ||
      new Response(JSON.stringify({ accepted: 1, duplicates: 0, rejected: 1, results: [{ index: 0, status: "accepted" }, { index: 1, status: "rejected", errors: [{ field: "userId", code: "too_short", message: "m" }] }] }), {
        status: 200,
        headers: { date: new Date(Date.now() + 3600_000).toUTCString() },
      })
    );
  };
  const { c, seen } = client({ fetch: fetch as any });
  c.track("cart_viewed");
  c.track("cart_viewed", {}, { userId: "" });
  (await opened()).drop();
  await until(() => FakeSocket.all.length == 2);
  FakeSocket.all[1].drop();
  await c.flush(4000);
  assert.equal(calls.length, 2, JSON.stringify(calls));
  assert.ok(calls[1].at - calls[0].at >= 1000, "Retry-After: 1 not honoured");
  assert.deepEqual(calls[1].body, calls[0].body);
  assert.equal(seen.delivered.length, 1);
  assert.equal(seen.rejected[0][1][0].code, "too_short");
  // The next event is stamped an hour ahead, on the server's clock.
  const id = c.track("cart_viewed");
  await until(() => calls.length == 3);
  const sent = calls[2].body.events.find((e: CartEvent) => e.eventId == id);
  assert.ok(Math.abs(Date.parse(sent.timestamp) - Date.now() - 3600_000) < 3000);
  c.close();
});

test("a full queue drops the oldest and reports them", async () => {
  const { c, seen } = client({ maxQueueEvents: 3 });
  const ids = [0, 1, 2, 3, 4].map(() => c.track("cart_viewed"));
  assert.deepEqual(seen.dropped.map((e) => e.eventId), ids.slice(0, 2));
  assert.equal(c.stats().dropped, 2);
  assert.equal(c.stats().queued, 3);
  c.close();
});

test("a beacon hands over the waiting events within the budget, and they stay queued", async () => {
  const beacons: { url: string; body: string }[] = [];
  Object.defineProperty(globalThis, "navigator", {
    configurable: true,
    value: { sendBeacon: (url: string, body: string) => (beacons.push({ url, body }), true) },
  });
  try {
    const { c } = client({ beaconBudget: 3000 });
    const ids = Array.from({ length: 20 }, (_, i) => c.track("item_added", { productId: "p" + i, pad: "x".repeat(200) }));
    c.beacon();
    assert.equal(beacons.length, 1);
    assert.equal(beacons[0].url, "http://cs.test/events/beacon?apiKey=pk%201");
    const sent = JSON.parse(beacons[0].body).events.map((e: CartEvent) => e.eventId);
    assert.ok(beacons[0].body.length <= 3000 && sent.length >= 5, `${sent.length} events in ${beacons[0].body.length} bytes`);
    assert.deepEqual(sent, ids.slice(0, sent.length), "the oldest first");
    // The budget is spent until those bytes have gone: nothing more now.
    c.beacon();
    assert.equal(beacons.length, 1);
    assert.equal(c.stats().queued, 20, "beaconed events stay queued until an ack");
    assert.equal(c.stats().beaconed, sent.length);
    c.close();
  } finally {
    delete (globalThis as any).navigator;
  }
});

test("a page that tracks and leaves before its storage is open still beacons (pagehide heard from init on)", async () => {
  const beacons: string[] = [];
  const page = new EventTarget();
  const g = globalThis as any;
  Object.defineProperty(globalThis, "navigator", {
    configurable: true,
    value: { sendBeacon: (_url: string, body: string) => (beacons.push(body), true) },
  });
  g.addEventListener = page.addEventListener.bind(page);
  g.removeEventListener = page.removeEventListener.bind(page);
  // No storage answers yet: the page leaves in the task that called init().
  const { c } = client({ store: { kind: "indexeddb", shared: true, all: () => new Promise(() => {}), put: () => new Promise(() => {}), del: async () => {} } });
  try {
    const ids = [1, 2, 3].map((i) => c.track("cart_viewed", { itemCount: i }));
    page.dispatchEvent(new Event("pagehide"));
    assert.equal(beacons.length, 1);
    assert.deepEqual(JSON.parse(beacons[0]).events.map((e: CartEvent) => e.eventId), ids);
    c.close();
    page.dispatchEvent(new Event("pagehide"));
    assert.equal(beacons.length, 1, "a closed client hears nothing more");
  } finally {
    c.close();
    delete g.navigator;
    delete g.addEventListener;
    delete g.removeEventListener;
  }
});

test("a request that keeps failing at the network (an ad blocker) backs off past the short cap", async () => {
  let calls = 0;
  const fetch = async () => {
    calls++;
    throw new TypeError("Failed to fetch");
  };
  const random = Math.random;
  Math.random = () => 0.999;
  try {
    // Capped at 20 ms, attempts would go on every 20 ms. From the sixth failure in a row the
    // cap is the long one, so the waits keep doubling: 640 ms after the sixth, 1280 ms after
    // the seventh (two socket opens, then HTTP batches).
    const { c } = client({ fetch: fetch as any, backoffBase: 20, backoffCap: 20, backoffLongCap: 100000 });
    c.track("cart_viewed");
    (await opened()).drop();
    await until(() => FakeSocket.all.length == 2);
    FakeSocket.all[1].drop();
    await until(() => calls == 5, 5000);
    await tick(1000);
    assert.equal(calls, 5, "attempted again within 1 s of the seventh failure");
    assert.equal(FakeSocket.all.length, 2);
    assert.equal(c.stats().retries, 7);
    c.close();
  } finally {
    Math.random = random;
  }
});

test("an idle socket is closed, and the next event opens another", async () => {
  const { c, seen } = client({ idleTimeout: 100 });
  c.track("cart_viewed");
  const ws = await opened();
  ws.ack();
  await until(() => ws.sent.length == 1);
  ws.reply({ type: "event_ack", requestId: ws.sent[0].requestId, status: "accepted" });
  await until(() => ws.closed);
  c.track("cart_cleared");
  await until(() => FakeSocket.all.length == 2);
  const ws2 = FakeSocket.all[1];
  ws2.ack();
  await until(() => ws2.sent.length == 1);
  assert.equal(ws2.sent[0].data.eventType, "cart_cleared");
  ws2.reply({ type: "event_ack", requestId: ws2.sent[0].requestId, status: "accepted" });
  await c.flush(1000);
  assert.equal(seen.delivered.length, 2);
  assert.equal(c.stats().retries, 0, "closing an idle socket is not a failure");
  c.close();
});
