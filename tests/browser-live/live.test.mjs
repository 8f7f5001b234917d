// Browser tests of /live: Debian's Chromium (/usr/bin/chromium) driven by playwright-core,
// against a real cartstream binary this test starts on a free port with a key of each scope.
//
//   node --experimental-websocket live.test.mjs [path/to/cartstream] [output dir]
//
// Screenshots (desktop and phone) are written to the output dir (default
// target/browser-live under the checkout).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { test, before, after } from 'node:test';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const BIN = resolve(process.argv[2] || process.env.CARTSTREAM_BIN || join(root, 'target/debug/cartstream'));
const OUT = resolve(process.argv[3] || process.env.LIVE_TEST_OUT || join(root, 'target/browser-live'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const KEYS = { ingest: 'ingest-key-1', read: 'read-key-1', admin: 'admin-key-1' };

let server, base, dataDir, browser, page, logs = '';
const pageErrors = [];

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
  });
}

async function waitHealthy(deadlineMs) {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    try { if ((await fetch(base + '/health')).ok) return; } catch (_) { /* not yet */ }
    if (server.exitCode !== null) throw new Error('cartstream exited: ' + logs);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('cartstream did not become healthy: ' + logs);
}

const uid = (p) => p + '-' + Math.random().toString(36).slice(2, 10);

async function postHttp(events) {
  const r = await fetch(base + '/events/batch', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEYS.ingest },
    body: JSON.stringify({ events }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).results;
}

// One event over the WebSocket channel; resolves with its ack.
function sendWs(event) {
  return new Promise((ok, fail) => {
    const ws = new WebSocket(base.replace('http', 'ws') + '/events/stream?apiKey=' + KEYS.ingest);
    ws.onerror = () => fail(new Error('WebSocket failed'));
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === 'connection_ack') {
        ws.send(JSON.stringify({ type: 'cart_event', requestId: 'r1', data: event }));
      } else { ws.close(); ok(msg); }
    };
  });
}

const cartViewed = (userId, id = uid('cv')) => ({ eventId: id, userId, eventType: 'cart_viewed' });
const itemAdded = (userId, id = uid('ia')) => ({ eventId: id, userId, eventType: 'item_added', metadata: { productId: 'p-1', quantity: 1 } });
const row = (text) => page.locator('#events li', { hasText: text });

async function connectWith(key) {
  await page.fill('#key', key);
  await page.click('#connect');
}

before(async () => {
  mkdirSync(OUT, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'cartstream-live-'));
  const port = await freePort();
  base = 'http://127.0.0.1:' + port;
  server = spawn(BIN, [], {
    env: {
      ...process.env,
      CARTSTREAM_LISTEN: '127.0.0.1:' + port,
      CARTSTREAM_DATA_DIR: dataDir,
      CARTSTREAM_API_KEYS: KEYS.ingest,
      CARTSTREAM_READ_KEYS: KEYS.read,
      CARTSTREAM_ADMIN_KEY: KEYS.admin,
      CARTSTREAM_LOG: 'warn',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stdout.on('data', (d) => { logs += d; });
  server.stderr.on('data', (d) => { logs += d; });
  await waitHealthy(30000);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.kill('SIGTERM');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('the page is served with a strict CSP and asks for a key', async () => {
  const resp = await page.goto(base + '/live');
  assert.equal(resp.status(), 200);
  const csp = resp.headers()['content-security-policy'];
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /connect-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(await page.isVisible('#key'), true);
  assert.equal(await page.isVisible('#app'), false);
});

test('a wrong key is refused', async () => {
  await connectWith('not-a-key');
  await page.waitForSelector('#login-error:has-text("refused")', { timeout: 5000 });
  assert.equal(await page.isVisible('#app'), false);
  await connectWith(KEYS.ingest);
  await page.waitForSelector('#login-error:has-text("no read scope")', { timeout: 5000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cartstream.liveKey')), null);
});

test('a read key sees the tail but not the operator panels', async () => {
  await connectWith(KEYS.read);
  await page.waitForSelector('#status:has-text("live · read")', { timeout: 5000 });
  assert.equal(await page.isVisible('#ops'), false);
  await page.click('#forget');
});

test('accepted events appear within 1 s, from WebSocket and HTTP', async () => {
  await connectWith(KEYS.admin);
  await page.waitForSelector('#status:has-text("live · admin")', { timeout: 5000 });
  assert.equal(await page.isVisible('#ops'), true);
  const wsId = uid('ws');
  const ack = await sendWs(itemAdded('u-ws', wsId));
  assert.equal(ack.status, 'accepted');
  await row(wsId).waitFor({ timeout: 1000 });
  const httpId = uid('http');
  const [res] = await postHttp([cartViewed('u-http', httpId)]);
  assert.equal(res.status, 'accepted');
  await row(httpId).waitFor({ timeout: 1000 });
  assert.match(await row(httpId).innerText(), /accepted/);
});

test('a rejected event shows the rule it broke', async () => {
  const [res] = await postHttp([{ eventId: uid('bad'), userId: 'u-bad', eventType: 'checkout_started', metadata: { itemCount: 1.5 } }]);
  assert.equal(res.status, 'rejected');
  const r = row('u-bad');
  await r.waitFor({ timeout: 1000 });
  const text = await r.innerText();
  assert.match(text, /rejected/);
  assert.match(text, /metadata\.cartValue required/);
  assert.match(text, /metadata\.itemCount invalid_type/);
  await r.click();
  assert.match(await page.textContent('#detail'), /"outcome": "rejected"/);
});

test('a filter by type hides the others', async () => {
  const before = uid('before');
  await postHttp([itemAdded('u-f', before)]);
  await row(before).waitFor({ timeout: 1000 });
  await page.selectOption('#f-type', 'cart_viewed');
  await page.waitForFunction(() => document.querySelector('#events li') !== null);
  assert.equal(await row(before).isVisible(), false, 'an item_added row already shown is hidden');
  const hidden = uid('hide'), shown = uid('show');
  await postHttp([itemAdded('u-f', hidden), cartViewed('u-f', shown)]);
  await row(shown).waitFor({ timeout: 1000 });
  assert.equal(await row(hidden).count(), 0, 'the server did not send the filtered-out event');
  const visibleTypes = await page.$$eval('#events li:not([hidden])', (lis) => [...new Set(lis.map((li) => li.dataset.type))]);
  assert.deepEqual(visibleTypes, ['cart_viewed']);
  await page.selectOption('#f-type', '');
  assert.equal(await row(before).isVisible(), true);
});

test('pause holds the list still; resume shows what came', async () => {
  await page.click('#pause');
  const count = await page.locator('#events li').count();
  const held = uid('held');
  await postHttp([cartViewed('u-p', held)]);
  await page.waitForSelector('#pause:has-text("1 new")', { timeout: 2000 });
  assert.equal(await page.locator('#events li').count(), count);
  assert.equal(await row(held).count(), 0);
  await page.click('#pause');
  await row(held).waitFor({ timeout: 1000 });
});

test('hostile event data is shown as text and never runs', async () => {
  const img = '<img src=x onerror="window.__pwned=1">';
  const script = '</script><script>window.__pwned=2</script>';
  await postHttp([
    { eventId: uid('xss'), userId: img, sessionId: script, eventType: 'item_added', metadata: { productId: script, note: img } },
    { userId: script, eventType: img },
  ]);
  await page.locator('#events li', { hasText: img }).first().waitFor({ timeout: 1000 });
  await page.locator('#events li', { hasText: script }).first().waitFor({ timeout: 1000 });
  await page.locator('#events li', { hasText: img }).first().click();
  assert.match(await page.textContent('#detail'), /window\.__pwned=2/);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await page.locator('#events img, #detail img, #events script').count(), 0);
});

test('the key is kept for the tab session only, and the page reconnects with it', async () => {
  await page.reload();
  await page.waitForSelector('#status:has-text("live · admin")', { timeout: 5000 });
  const id = uid('after-reload');
  await postHttp([cartViewed('u-r', id)]);
  await row(id).waitFor({ timeout: 1000 });
});

test('screenshots: desktop and phone', async () => {
  await postHttp([
    itemAdded('alice'), cartViewed('bob'), { userId: 'carol', eventType: 'coupon_applied', metadata: {} },
    { eventId: uid('co'), userId: 'dave', eventType: 'checkout_completed', metadata: { orderId: 'o-1', cartValue: 42.5 } },
  ]);
  // Two metric polls, so the rates have a sample.
  await page.waitForFunction(() => document.querySelectorAll('#types-body tr').length > 0, null, { timeout: 10000 });
  await page.locator('#events li').first().click();
  await page.screenshot({ path: join(OUT, 'live-desktop.png'), fullPage: true });
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const p = await phone.newPage();
  await p.goto(base + '/live');
  await p.fill('#key', KEYS.admin);
  await p.click('#connect');
  await p.waitForSelector('#status:has-text("live · admin")', { timeout: 5000 });
  await postHttp([itemAdded('phone-user'), { userId: 'phone-bad', eventType: 'item_added' }]);
  await p.locator('#events li', { hasText: 'phone-bad' }).waitFor({ timeout: 1000 });
  await p.waitForFunction(() => document.querySelectorAll('#types-body tr').length > 0, null, { timeout: 10000 });
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, 'no horizontal scrolling on a phone (overflow ' + overflow + ' px)');
  await p.screenshot({ path: join(OUT, 'live-phone.png'), fullPage: true });
  await phone.close();
  console.log('screenshots in ' + OUT);
});

test('no script errors and no CSP violations on the page', () => {
  assert.deepEqual(pageErrors.filter((e) => !/401|403/.test(e)), []);
});
