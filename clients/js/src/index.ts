/**
 * cartstream's browser SDK. As a module: `import * as cartstream from "@cartstream/browser"`;
 * as a script tag: the global `cartstream`.
 */
import { Client, type Context, type Options, type Stats } from "./client";
import type { EventType, MetadataByType } from "./types";

export { Client, uuid } from "./client";
export type { Context, Options, Stats } from "./client";
export type * from "./types";

let client: Client | undefined;

function current(): Client {
  if (!client) throw new Error("cartstream: call init({ endpoint, apiKey }) first");
  return client;
}

/** Starts the page's client (closing one started before) and returns it. */
export function init(options: Options): Client {
  if (client) client.close();
  return (client = new Client(options));
}

/** Queues an event; returns its `eventId`. */
export function track<T extends EventType>(eventType: T, metadata?: MetadataByType[T] & Record<string, unknown>, context?: Context): string {
  return current().track(eventType, metadata, context);
}

/** Resolves once every event tracked so far is answered or dropped. */
export function flush(timeoutMs?: number): Promise<void> {
  return current().flush(timeoutMs);
}

/** Stops sending; queued events stay stored for the next page. */
export function close(): void {
  if (client) client.close();
  client = undefined;
}

export function stats(): Stats {
  return current().stats();
}
