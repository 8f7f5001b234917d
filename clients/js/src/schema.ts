/**
 * The metadata each event type requires, as a value, so a unit test can compare it with the
 * server's OpenAPI document. Typed so that `tsc` refuses a key the interfaces in types.ts do
 * not require. Not part of the bundle.
 */
import type { EventType, MetadataByType, RequiredKeys } from "./types";

type Table = { [K in EventType]: ReadonlyArray<RequiredKeys<MetadataByType[K]>> };
// Every required key listed: a missing one makes this `false` and the assignment below fail.
type Complete = {
  [K in EventType]: RequiredKeys<MetadataByType[K]> extends (typeof REQUIRED_METADATA)[K][number]
    ? true
    : false;
};
export const REQUIRED_METADATA = {
  item_added: ["productId"],
  item_removed: ["productId"],
  quantity_updated: ["productId", "quantity"],
  cart_viewed: [],
  cart_cleared: [],
  coupon_applied: ["couponCode"],
  checkout_started: ["cartValue", "itemCount"],
  checkout_completed: ["orderId", "cartValue"],
} as const satisfies Table;
export const COMPLETE: Complete = {
  item_added: true,
  item_removed: true,
  quantity_updated: true,
  cart_viewed: true,
  cart_cleared: true,
  coupon_applied: true,
  checkout_started: true,
  checkout_completed: true,
};
