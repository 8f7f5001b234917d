/** The event types of the protocol (docs/PROTOCOL.md section 1) and the metadata each takes. */

/** `item_added`, `item_removed`. */
export interface ItemMetadata {
  productId: string;
  quantity?: number;
  price?: number;
  currency?: string;
}
/** `quantity_updated`. */
export interface QuantityMetadata {
  productId: string;
  quantity: number;
  price?: number;
  currency?: string;
}
/** `cart_viewed`, `cart_cleared`. */
export interface CartMetadata {
  cartValue?: number;
  itemCount?: number;
  currency?: string;
}
/** `coupon_applied`. */
export interface CouponMetadata {
  couponCode: string;
  discount?: number;
  currency?: string;
}
/** `checkout_started`. */
export interface CheckoutStartedMetadata {
  cartValue: number;
  itemCount: number;
  currency?: string;
}
/** `checkout_completed`. */
export interface CheckoutCompletedMetadata {
  orderId: string;
  cartValue: number;
  itemCount?: number;
  currency?: string;
}

/** The metadata each event type takes; keys beyond the named ones are kept as given. */
export interface MetadataByType {
  item_added: ItemMetadata;
  item_removed: ItemMetadata;
  quantity_updated: QuantityMetadata;
  cart_viewed: CartMetadata;
  cart_cleared: CartMetadata;
  coupon_applied: CouponMetadata;
  checkout_started: CheckoutStartedMetadata;
  checkout_completed: CheckoutCompletedMetadata;
}

export type EventType = keyof MetadataByType;

/** An event as it is sent: `eventId` and `timestamp` are set once, when it is tracked. */
export interface CartEvent {
  eventId: string;
  userId: string;
  sessionId?: string;
  eventType: EventType;
  timestamp: string;
  metadata: Record<string, unknown>;
}

/** One broken rule, as the server reports it. */
export interface FieldError {
  field: string;
  code: string;
  message: string;
}

/** The keys a metadata type requires. */
export type RequiredKeys<T> = {
  [K in keyof T]-?: object extends Pick<T, K> ? never : K;
}[keyof T];
