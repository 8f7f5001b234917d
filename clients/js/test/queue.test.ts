import { test } from "node:test";
import assert from "node:assert/strict";
import { backoff, Queue, type Rec } from "../src/queue";

let n = 0;
const rec = (id: string, s = 10, t = n): Rec => ({ id, t, n: n++, c: 0, s, e: { eventId: id, userId: "u", eventType: "cart_viewed", timestamp: "", metadata: {} } });

test("the queue keeps the oldest first and ignores an id it has", () => {
  const q = new Queue(10, 1000);
  q.add([rec("b", 10, 2), rec("a", 10, 1)]);
  q.add([rec("a", 10, 1)]);
  assert.deepEqual(q.ordered().map((r) => r.id), ["a", "b"]);
  assert.equal(q.size, 2);
  assert.equal(q.bytes, 20);
});

test("past its event bound the queue drops the oldest and says which", () => {
  const q = new Queue(3, 1000);
  const dropped = q.add(["a", "b", "c", "d", "e"].map((id, i) => rec(id, 10, i)));
  assert.deepEqual(dropped.map((r) => r.id), ["a", "b"]);
  assert.deepEqual(q.ordered().map((r) => r.id), ["c", "d", "e"]);
});

test("past its byte bound the queue drops the oldest until it fits", () => {
  const q = new Queue(100, 100);
  q.add([rec("a", 40, 1), rec("b", 40, 2)]);
  const dropped = q.add([rec("c", 50, 3)]);
  assert.deepEqual(dropped.map((r) => r.id), ["a"]);
  assert.equal(q.bytes, 90);
  q.remove("b");
  assert.equal(q.bytes, 50);
});

test("take returns the oldest by count and bytes, skipping what is excluded", () => {
  const q = new Queue(100, 10000);
  q.add(["a", "b", "c", "d"].map((id, i) => rec(id, 10, i)));
  assert.deepEqual(q.take(2, 1000, () => false).map((r) => r.id), ["a", "b"]);
  assert.deepEqual(q.take(10, 1000, (r) => r.id == "a").map((r) => r.id), ["b", "c", "d"]);
  assert.deepEqual(q.take(10, 22, () => false).map((r) => r.id), ["a", "b"]);
  // The first event goes even when alone it is over the byte budget.
  assert.deepEqual(q.take(10, 5, () => false).map((r) => r.id), ["a"]);
});

test("backoff is full jitter below the capped exponential", () => {
  assert.equal(backoff(0, 500, 30000, () => 0), 0);
  assert.equal(backoff(0, 500, 30000, () => 0.999999), 499);
  assert.equal(backoff(3, 500, 30000, () => 0.5), 2000);
  assert.equal(backoff(10, 500, 30000, () => 0.5), 15000);
  assert.equal(backoff(1000, 500, 30000, () => 0.999999), 29999);
  for (let i = 0; i < 1000; i++) {
    const d = backoff(i % 12, 500, 30000);
    assert.ok(d >= 0 && d < Math.min(30000, 500 * 2 ** (i % 12)));
  }
});
