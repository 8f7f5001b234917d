import type { CartEvent } from "./types";

/** A queued event: the event as sent, and what the queue keeps about it. */
export interface Rec {
  /** The `eventId`. */
  id: string;
  /** Local clock at track time (ms) and a sequence number: the queue's order. */
  t: number;
  n: number;
  /** 1 once `timestamp` is on the server's clock (0: on the page's, not yet corrected). */
  c: number;
  /** Bytes of the event as compact JSON. */
  s: number;
  e: CartEvent;
}

/**
 * The events waiting for an answer, oldest first, bounded by count and bytes: adding past a
 * bound drops the oldest, which the caller counts and reports. Pure: storage is the caller's.
 */
export class Queue {
  readonly recs = new Map<string, Rec>();
  bytes = 0;
  constructor(
    public maxEvents: number,
    public maxBytes: number,
  ) {}

  get size(): number {
    return this.recs.size;
  }

  get(id: string): Rec | undefined {
    return this.recs.get(id);
  }

  has(id: string): boolean {
    return this.recs.has(id);
  }

  /** Adds records not already queued; returns the records dropped to stay in bounds. */
  add(rs: Rec[]): Rec[] {
    let sorted = false;
    for (const r of rs) {
      if (this.recs.has(r.id)) continue;
      this.recs.set(r.id, r);
      this.bytes += r.s;
      sorted = true;
    }
    const dropped: Rec[] = [];
    if (!sorted || (this.recs.size <= this.maxEvents && this.bytes <= this.maxBytes)) return dropped;
    const all = this.ordered();
    for (const r of all) {
      if (this.recs.size <= this.maxEvents && this.bytes <= this.maxBytes) break;
      this.remove(r.id);
      dropped.push(r);
    }
    return dropped;
  }

  /** Removes an event; returns it if it was queued. */
  remove(id: string): Rec | undefined {
    const r = this.recs.get(id);
    if (r) {
      this.recs.delete(id);
      this.bytes -= r.s;
    }
    return r;
  }

  /** Every record, oldest first. */
  ordered(): Rec[] {
    return [...this.recs.values()].sort((a, b) => a.t - b.t || a.n - b.n);
  }

  /**
   * The oldest records `skip` does not exclude, at most `count` of them and, past the first,
   * at most `bytes` together.
   */
  take(count: number, bytes: number, skip: (r: Rec) => boolean): Rec[] {
    const out: Rec[] = [];
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
}

/** Capped exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)). */
export function backoff(attempt: number, base: number, cap: number, random = Math.random): number {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}
