// cartstream /live: the tap (GET /events/tap) and the server's counters, rendered with
// textContent only. Every field of an event comes from whoever holds an ingest key, so no
// event data is ever parsed as HTML.
'use strict';

const KEY_STORE = 'cartstream.liveKey';
const MAX_ROWS = 500;
const OUTCOMES = ['accepted', 'duplicate', 'rejected', 'unavailable'];
const TYPES = ['item_added', 'item_removed', 'quantity_updated', 'cart_viewed', 'cart_cleared',
  'coupon_applied', 'checkout_started', 'checkout_completed'];
const HISTORY = 150; // samples of 2 s: five minutes

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
};

const state = {
  ws: null, key: '', scope: null, paused: false, held: [], shown: 0, skipped: 0,
  selected: null, timers: [], last: null, history: [], closing: false,
};

function setStatus(text, cls) {
  const s = $('status');
  s.textContent = text;
  s.className = 'status ' + (cls || '');
}

function filter() {
  const f = {};
  const t = $('f-type').value, u = $('f-user').value.trim(), o = $('f-outcome').value;
  if (t) f.eventTypes = [t];
  if (u) f.userId = u;
  if (o) f.outcomes = [o];
  return f;
}

function matches(msg, f) {
  const ev = msg.event || {};
  return (!f.eventTypes || f.eventTypes.includes(ev.eventType))
    && (!f.userId || ev.userId === f.userId)
    && (!f.outcomes || f.outcomes.includes(msg.outcome));
}

function connect(key) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(proto + '//' + location.host + '/events/tap');
  state.ws = ws;
  state.closing = false;
  setStatus('connecting…');
  ws.onopen = () => {
    const hello = { type: 'subscribe', filter: filter() };
    if (key) hello.key = key;
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (m) => {
    let msg;
    try { msg = JSON.parse(m.data); } catch (_) { return; }
    if (msg.type === 'tap_ack') return started(key, msg);
    if (msg.type === 'tap_error') return refused(msg);
    if (msg.type === 'skipped') return skipped(msg.count);
    if (msg.type === 'tap_events' && Array.isArray(msg.events)) {
      for (const item of msg.events) arrived(Array.isArray(item) ? fromRow(item) : item);
    }
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (state.scope && !state.closing) {
      setStatus('disconnected; retrying', 'off');
      setTimeout(() => { if (!state.ws && state.scope) connect(state.key); }, 2000);
    }
  };
}

function started(key, ack) {
  const first = state.scope === null;
  state.key = key;
  state.scope = ack.scope;
  sessionStorage.setItem(KEY_STORE, key);
  setStatus('live · ' + ack.scope, 'on');
  $('login').hidden = true;
  $('app').hidden = false;
  $('forget').hidden = false;
  $('ops').hidden = ack.scope !== 'admin';
  if (first) {
    poll();
    state.timers.push(setInterval(poll, 2000));
  }
}

function refused(msg) {
  const wasLive = state.scope !== null;
  state.closing = true;
  stop();
  sessionStorage.removeItem(KEY_STORE);
  $('login').hidden = false;
  $('app').hidden = true;
  $('forget').hidden = true;
  $('login-error').textContent = (wasLive ? 'disconnected: ' : 'refused: ') + (msg.message || msg.code);
  setStatus('refused', 'off');
}

function stop() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  state.scope = null;
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
}

function skipped(n) {
  state.skipped += n;
  const p = $('skipped');
  p.hidden = false;
  p.textContent = state.skipped + ' events skipped: this tab could not keep up (the server never waits for it)';
}

function arrived(msg) {
  if (state.paused) {
    state.held.push(msg);
    if (state.held.length > MAX_ROWS) state.held.shift();
    $('pause').textContent = 'Resume (' + state.held.length + ' new)';
    return;
  }
  addRow(msg);
}

// A valid event comes as a row of values (the AsyncAPI document's TapEventRow); the page
// shows it as the object GET /events returns, with its outcome, channel and reason around it.
function fromRow(r) {
  const iso = (ms) => {
    const d = new Date(ms);
    return isNaN(d) ? String(ms) : d.toISOString();
  };
  const event = { eventId: r[2], userId: r[3] };
  if (r[4] !== null) event.sessionId = r[4];
  event.eventType = r[5];
  event.timestamp = iso(r[6]);
  event.metadata = r[7];
  event.receivedAt = iso(r[8]);
  const msg = { outcome: r[0], channel: r[1], event };
  if (r.length > 9) msg.reason = r[9];
  return msg;
}

function when(msg) {
  const ev = msg.event || {};
  const t = ev.receivedAt || ev.timestamp;
  const d = t ? new Date(t) : new Date();
  return isNaN(d) ? '' : d.toLocaleTimeString();
}

function addRow(msg) {
  const list = $('events');
  const li = el('li');
  li.dataset.outcome = msg.outcome;
  const ev = (msg.event && typeof msg.event === 'object') ? msg.event : {};
  li.dataset.type = typeof ev.eventType === 'string' ? ev.eventType : '';
  li.dataset.user = typeof ev.userId === 'string' ? ev.userId : '';
  li.append(el('span', 't', when(msg)), el('span', 'o ' + msg.outcome, msg.outcome),
    el('span', 'ty', ev.eventType === undefined ? '(no type)' : ev.eventType),
    el('span', 'u', ev.userId === undefined ? '(no user)' : ev.userId));
  if (ev.eventId !== undefined) li.append(el('span', 'id', ev.eventId));
  if (msg.channel) li.append(el('span', 'dim', msg.channel));
  if (msg.outcome === 'rejected' && Array.isArray(msg.errors)) {
    const why = msg.errors.map((e) => (e.field || '(event)') + ' ' + e.code + ': ' + e.message).join(' · ');
    li.append(el('span', 'why', why));
  } else if (msg.reason) {
    li.append(el('span', 'why', msg.reason));
  }
  li.addEventListener('click', () => show(li, msg));
  li.hidden = !matches(msg, filter());
  list.prepend(li);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
  state.shown += 1;
  $('tail-count').textContent = '(' + state.shown + ' received)';
}

function show(li, msg) {
  if (state.selected) state.selected.classList.remove('selected');
  state.selected = li;
  li.classList.add('selected');
  const d = $('detail');
  d.hidden = false;
  d.textContent = JSON.stringify(msg, null, 2);
}

function refilter() {
  const f = filter();
  for (const li of $('events').children) {
    li.hidden = !((!f.eventTypes || f.eventTypes.includes(li.dataset.type))
      && (!f.userId || li.dataset.user === f.userId)
      && (!f.outcomes || f.outcomes.includes(li.dataset.outcome)));
  }
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: 'subscribe', filter: f }));
  }
}

// Prometheus text: the samples of the metrics the page shows.
function parseMetrics(text) {
  const out = { byType: {}, journal: null, age: null };
  for (const line of text.split('\n')) {
    let m = /^cartstream_events_total\{event_type="([a-z_]+)",outcome="([a-z]+)"\} ([0-9.e+]+)/.exec(line);
    if (m) {
      (out.byType[m[1]] = out.byType[m[1]] || {})[m[2]] = Number(m[3]);
      continue;
    }
    m = /^cartstream_journal_entries ([0-9.e+-]+)/.exec(line);
    if (m) out.journal = Number(m[1]);
    m = /^cartstream_journal_oldest_age_seconds ([0-9.e+-]+)/.exec(line);
    if (m) out.age = Number(m[1]);
  }
  return out;
}

async function poll() {
  try {
    const r = await fetch('/metrics', { cache: 'no-store' });
    rates(parseMetrics(await r.text()), performance.now());
  } catch (_) { /* the next poll tries again */ }
  if (state.scope === 'admin') operator();
}

function rates(now, t) {
  const prev = state.last;
  state.last = { m: now, t };
  if (!prev) return;
  const dt = (t - prev.t) / 1000;
  if (dt <= 0) return;
  const sample = { outcome: {}, type: {} };
  for (const o of OUTCOMES) sample.outcome[o] = 0;
  for (const ty of Object.keys(now.byType)) {
    let sum = 0;
    for (const o of OUTCOMES) {
      const d = Math.max(0, ((now.byType[ty] || {})[o] || 0) - ((prev.m.byType[ty] || {})[o] || 0)) / dt;
      sample.outcome[o] += d;
      sum += d;
      if (o === 'rejected') sample.type[ty + ':rejected'] = d;
    }
    sample.type[ty] = sum;
  }
  state.history.push(sample);
  if (state.history.length > HISTORY) state.history.shift();
  for (const o of OUTCOMES) $('rate-' + o).textContent = fmt(sample.outcome[o]);
  drawTypes(sample);
  drawChart();
  if (state.scope === 'admin') {
    $('journal-entries').textContent = now.journal === null ? 'n/a' : String(now.journal);
    $('journal-age').textContent = now.age === null ? 'n/a' : now.age.toFixed(1);
  }
}

const fmt = (x) => (x >= 100 ? Math.round(x).toString() : x.toFixed(1));

function drawTypes(sample) {
  const body = $('types-body');
  body.replaceChildren();
  for (const ty of TYPES.concat(['other'])) {
    const avg = state.history.reduce((a, s) => a + (s.type[ty] || 0), 0) / state.history.length;
    const tr = el('tr');
    tr.append(el('td', '', ty), el('td', '', fmt(sample.type[ty] || 0)), el('td', '', fmt(avg)),
      el('td', '', fmt(sample.type[ty + ':rejected'] || 0)));
    body.append(tr);
  }
}

function drawChart() {
  const c = $('chart');
  const w = c.clientWidth || 600, h = 120;
  if (c.width !== w) c.width = w;
  const g = c.getContext('2d');
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...state.history.map((s) => Math.max(...OUTCOMES.map((o) => s.outcome[o]))));
  const colors = { accepted: '#15803d', duplicate: '#6d28d9', rejected: '#b91c1c', unavailable: '#b45309' };
  for (const o of OUTCOMES) {
    g.strokeStyle = colors[o];
    g.lineWidth = 1.5;
    g.beginPath();
    state.history.forEach((s, i) => {
      const x = w - (state.history.length - 1 - i) * (w / (HISTORY - 1));
      const y = h - 4 - (s.outcome[o] / max) * (h - 16);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
  g.fillStyle = '#6b7280';
  g.font = '11px system-ui, sans-serif';
  g.fillText('max ' + fmt(max) + '/s, last 5 min', 4, 12);
}

async function operator() {
  const headers = state.key ? { 'X-Admin-Key': state.key } : {};
  try {
    const ready = await fetch('/ready', { cache: 'no-store' });
    $('ready').textContent = ready.status === 200 ? 'ready' : 'not ready (' + ready.status + ')';
  } catch (_) { $('ready').textContent = '?'; }
  try {
    const r = await fetch('/routes', { headers, cache: 'no-store' });
    const body = $('routes-body');
    if (!r.ok) {
      body.replaceChildren();
      $('routes-note').textContent = 'GET /routes answered ' + r.status;
      return;
    }
    const data = await r.json();
    body.replaceChildren();
    for (const route of data.routes || []) {
      const tr = el('tr');
      tr.append(el('td', '', route.name), el('td', '', route.state), el('td', '', route.backlog),
        el('td', '', route.deadLetters), el('td', '', route.delivered));
      body.append(tr);
    }
    $('routes-note').textContent = (data.routes || []).length ? '' : 'no routes configured';
  } catch (_) { /* the next poll tries again */ }
}

function init() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    $('login-error').textContent = '';
    stop();
    connect($('key').value.trim());
  });
  $('forget').addEventListener('click', () => {
    state.closing = true;
    stop();
    sessionStorage.removeItem(KEY_STORE);
    $('key').value = '';
    $('login').hidden = false;
    $('app').hidden = true;
    $('forget').hidden = true;
    setStatus('not connected');
  });
  $('pause').addEventListener('click', () => {
    state.paused = !state.paused;
    const b = $('pause');
    b.setAttribute('aria-pressed', String(state.paused));
    if (!state.paused) {
      const held = state.held;
      state.held = [];
      held.forEach(addRow);
    }
    b.textContent = state.paused ? 'Resume' : 'Pause';
  });
  $('clear').addEventListener('click', () => {
    $('events').replaceChildren();
    $('detail').hidden = true;
    state.shown = 0;
    $('tail-count').textContent = '';
  });
  for (const id of ['f-type', 'f-outcome']) $(id).addEventListener('change', refilter);
  $('f-user').addEventListener('change', refilter);
  $('filter').addEventListener('submit', (e) => { e.preventDefault(); refilter(); });
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved !== null) connect(saved);
}

init();
