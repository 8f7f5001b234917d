import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { REQUIRED_METADATA } from "../src/schema";

// The SDK's event types and the metadata each requires are the server's, as its checked-in
// OpenAPI document says (tsc checks the same table against the types in src/types.ts).
test("the typed event types match the OpenAPI document", () => {
  const doc = JSON.parse(readFileSync(new URL("../../../openapi/openapi.json", import.meta.url), "utf8"));
  const schemas = doc.components.schemas;
  const resolve = (ref: string) => schemas[ref.replace("#/components/schemas/", "")];
  const mapping: Record<string, string> = schemas.CartEvent.discriminator.mapping;
  assert.deepEqual(Object.keys(mapping).sort(), Object.keys(REQUIRED_METADATA).sort());
  for (const [type, ref] of Object.entries(mapping)) {
    const object = resolve(resolve(ref).allOf[1].$ref);
    const m = object.properties.metadata;
    const meta = resolve(m.$ref || m.allOf[0].$ref);
    assert.deepEqual(meta.required || [], [...REQUIRED_METADATA[type as keyof typeof REQUIRED_METADATA]], type);
  }
});
