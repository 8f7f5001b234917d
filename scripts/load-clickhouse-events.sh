#!/usr/bin/env bash
# Loads N synthetic events straight into a cartstream ClickHouse table, for the read benchmark
# (examples/read-bench.rs runs it; it can also be run alone):
#   scripts/load-clickhouse-events.sh URL DATABASE TABLE N [USERS]
# USERS users (default 200,000), 8 event types, timestamps spread over the 30 days before now, received 0-2 s
# later, ids like a UUID. The table must exist (cartstream creates it); on the read layout its
# materialized views fill the index tables from this insert as they do from the service's.
set -euo pipefail
url=${1:?URL}; db=${2:?DATABASE}; table=${3:?TABLE}; n=${4:?N}; users=${5:-200000}
now_ms=$(( $(date +%s) * 1000 ))
start_ms=$(( now_ms - 30 * 24 * 3600 * 1000 ))
sql="INSERT INTO \`$db\`.\`$table\`
  (event_id, user_id, session_id, event_type, metadata,
   occurred_at, occurred_at_ms, received_at, received_at_ms, source)
SELECT
  lower(concat(hex(cityHash64(number, 1)), '-', hex(cityHash64(number, 2)))) AS id,
  concat('u-', toString(cityHash64(number, 3) % $users)),
  if(number % 3 = 0, NULL, concat('s-', toString(cityHash64(number, 4) % 1000000))),
  ['item_added', 'item_removed', 'quantity_updated', 'cart_viewed', 'cart_cleared',
   'coupon_applied', 'checkout_started', 'checkout_completed'][number % 8 + 1],
  concat('{\"productId\":\"p-', toString(number % 5000), '\",\"quantity\":', toString(number % 5 + 1), '}'),
  toDateTime(intDiv(occ, 1000)), occ,
  toDateTime(intDiv(occ + number % 2000, 1000)), occ + number % 2000,
  if(number % 2 = 0, 'ws', 'http')
FROM (SELECT number, toInt64($start_ms + cityHash64(number, 5) % (30 * 24 * 3600 * 1000)) AS occ
      FROM numbers($n))"
curl -sS --fail-with-body "$url/" --data-binary "$sql"
