// Headless subscribers of GET /events/tap, for measuring what watching costs ingest:
//
//   node --experimental-websocket scripts/tap-subscribers.mjs ws://HOST:PORT/events/tap [N] [KEY]
//
// Opens N (5) subscribers without a filter, each reading the full stream as fast as it can
// (a JSON.parse per frame), and exits when the server closes them, printing what each
// received and skipped. examples/tap-subscribers.rs does the same without parsing events;
// scripts/bench-with-taps.sh uses it, and this one with TAP_CLIENT=node.
const [url, n = '5', key] = process.argv.slice(2);
let open = Number(n);
for (let i = 0; i < Number(n); i++) {
  const ws = new WebSocket(url);
  const seen = { events: 0, skipped: 0 };
  ws.onopen = () => ws.send(JSON.stringify(key ? { type: 'subscribe', key } : { type: 'subscribe' }));
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === 'tap_events') seen.events += msg.count;
    else if (msg.type === 'skipped') seen.skipped += msg.count;
    else if (msg.type === 'tap_error') console.error('subscriber ' + i + ': ' + msg.message);
  };
  ws.onclose = () => {
    console.error(`subscriber ${i}: ${seen.events} events, ${seen.skipped} skipped`);
    if (--open === 0) process.exit(0);
  };
  ws.onerror = () => {};
}
