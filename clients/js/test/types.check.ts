// Not run: type-checked by `npm run typecheck` (scripts/browser-test.sh runs it). Every
// expected error below fails the check if its line ever becomes valid, so these are the
// promises the types make to a TypeScript shop.
import type { Client } from "../src/client";

export function typed(c: Client): void {
  c.track("item_added", { productId: "p", quantity: 1, note: "other keys are kept" });
  c.track("cart_viewed");
  c.track("checkout_completed", { orderId: "o-1", cartValue: 10 }, { userId: "u", sessionId: "s" });
  // @ts-expect-error productId is required for item_added
  c.track("item_added", {});
  // @ts-expect-error not an event type
  c.track("nope");
  // @ts-expect-error cartValue is a number
  c.track("checkout_started", { cartValue: "1", itemCount: 1 });
  // @ts-expect-error quantity_updated requires quantity
  c.track("quantity_updated", { productId: "p" });
}
