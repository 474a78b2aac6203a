// The sseproxy inspector page: one EventSource on the feed (streams/events), which starts with a
// snapshot of the streams and then sends their starts, events and ends. No library, no build step.
// Everything that comes from a stream is put on the page with textContent, never as HTML.
'use strict';

const MAX_EVENTS = 500;   // events kept per stream on the page
const MAX_ENDED = 100;    // as the proxy keeps
const SVG = 'http://www.w3.org/2000/svg';
const token = new URLSearchParams(location.search).get('token');
const withToken = (url) => (token ? `${url}?token=${encodeURIComponent(token)}` : url);

const state = {
  streams: new Map(),     // id -> stream fields (as /streams gives them)
  ended: [],              // ids, newest first
  events: new Map(),      // id -> [{n, t, name, size, data}]
  picked: null,
  offset: 0,              // this browser's clock minus the proxy's
  dropped: 0,
  pid: null,
};
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  if (cls === 'data' || cls === 'path') e.title = e.textContent;  // the whole text on hover
  return e;
}
const serverNow = () => Date.now() - state.offset;
function ms(v) {
  if (v === null || v === undefined) return '–';
  return v < 1000 ? `${v.toFixed(v < 10 ? 1 : 0)} ms` : `${(v / 1000).toFixed(2)} s`;
}
function secs(s) {
  if (s === null || s === undefined) return '–';
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
}
function bytes(b) {
  return b < 1024 ? `${b} B` : b < 1048576 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / 1048576).toFixed(1)} MiB`;
}
function outcomeClass(o) {
  return o === 'ok' ? 'outcome-ok' : (o === 'client_closed' || o === 'shutdown') ? 'outcome-warn' : 'outcome-bad';
}

// ---- the model -------------------------------------------------------------------------------
function upsert(s) {
  const old = state.streams.get(s.id);
  state.streams.set(s.id, Object.assign(old || {}, s));
  if (s.outcome && !state.ended.includes(s.id)) {
    state.ended.unshift(s.id);
    while (state.ended.length > MAX_ENDED) forget(state.ended.pop());
  }
}
function forget(id) {
  state.streams.delete(id);
  state.events.delete(id);
  if (state.picked === id) state.picked = null;
}
function onSnapshot(d) {
  state.offset = Date.now() - d.now;
  state.pid = d.pid;
  const keep = new Set([...d.active, ...d.ended].map((s) => s.id));
  for (const id of [...state.streams.keys()]) if (!keep.has(id)) forget(id);
  state.ended = [];
  for (const s of d.active) upsert(s);
  for (const s of [...d.ended].reverse()) upsert(s);
}
function onFrame(f) {
  const s = state.streams.get(f.id);
  if (!s) return;
  Object.assign(s, { events: f.events, bytes: f.bytes, last_event_at: f.t, ttfe_ms: f.ttfe_ms });
  let list = state.events.get(f.id);
  if (!list) state.events.set(f.id, (list = []));
  list.push({ n: f.n, t: f.t, name: f.name, size: f.size, data: f.data });
  if (list.length > MAX_EVENTS) list.splice(0, list.length - MAX_EVENTS);
}

// ---- the feed --------------------------------------------------------------------------------
function connect() {
  const es = new EventSource(withToken('streams/events'));
  const on = (type, fn) => es.addEventListener(type, (e) => { fn(JSON.parse(e.data)); schedule(); });
  on('snapshot', onSnapshot);
  on('start', upsert);
  on('head', upsert);
  on('frame', onFrame);
  on('end', upsert);
  on('drop', (d) => forget(d.id));
  on('dropped', (d) => { state.dropped += d.count; });
  on('shutdown', () => setStatus('proxy stopping', 'down'));
  es.onopen = () => setStatus('live', 'live');
  es.onerror = () => setStatus(es.readyState === EventSource.CLOSED ? 'closed (reload the page)' : 'reconnecting…', 'down');
}
function setStatus(text, cls) {
  const s = $('status');
  s.textContent = text;
  s.className = `status ${cls}`;
}

// ---- rendering -------------------------------------------------------------------------------
let pending = false;
function schedule() {
  if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); }
}
function row(s, ended) {
  const tr = el('tr');
  tr.dataset.id = s.id;
  if (state.picked === s.id) tr.classList.add('picked');
  const now = serverNow();
  const cells = [
    ['id', `#${s.id}`], ['route', s.route], ['method', s.method], ['path', s.path], ['client', s.client || '–'],
    ['age', ended ? secs(s.age_s) : secs(Math.max(0, (now - s.started) / 1000))],
    ['events num', s.events], ['bytes num', bytes(s.bytes)], ['ttfe num', ms(s.ttfe_ms)],
  ];
  for (const [cls, text] of cells) tr.appendChild(el('td', text, cls));
  if (ended) {
    tr.appendChild(el('td', s.outcome + (s.status ? ` (${s.status})` : ''), `outcome ${outcomeClass(s.outcome)}`));
  } else {
    const since = s.last_event_at ? (now - s.last_event_at) / 1000 : null;
    const td = el('td', since === null ? (s.status ? 'none yet' : 'waiting for head') : `${secs(since)} ago`, 'last num');
    if (since !== null && since > 5) td.classList.add('stale');
    tr.appendChild(td);
  }
  tr.addEventListener('click', () => { state.picked = s.id; render(); });
  return tr;
}
function fill(tableId, ids, ended) {
  const tbody = $(tableId).querySelector('tbody');
  tbody.replaceChildren(...ids.map((id) => row(state.streams.get(id), ended)));
  $(`${tableId}-count`).textContent = ids.length;
  $(`${tableId}-empty`).hidden = ids.length > 0;
}
function render() {
  const active = [...state.streams.values()].filter((s) => !s.outcome).map((s) => s.id).sort((a, b) => b - a);
  fill('active', active, false);
  fill('ended', state.ended.filter((id) => state.streams.has(id)), true);
  const meta = [`worker pid ${state.pid ?? '?'}`];
  if (state.dropped) meta.push(`${state.dropped} feed events dropped (this tab was slow)`);
  $('meta').textContent = meta.join(' · ');
  renderPicked();
}
function renderPicked() {
  const s = state.picked !== null ? state.streams.get(state.picked) : null;
  $('pick-hint').hidden = !!s;
  $('picked').hidden = !s;
  if (!s) return;
  $('picked-title').textContent = `#${s.id} ${s.method} ${s.path}`;
  const list = state.events.get(s.id) || [];
  const parts = [`route ${s.route}`, `${s.events} events`, bytes(s.bytes), `TTFE ${ms(s.ttfe_ms)}`,
    s.outcome ? `ended: ${s.outcome}` : 'in flight'];
  if (list.length && list[0].n > 1) parts.push(`events before #${list[0].n} were sent before this page saw them`);
  $('picked-summary').textContent = parts.join(' · ');
  plot(s, list);
  const tbody = $('events').querySelector('tbody');
  const rows = [];
  for (let i = list.length - 1; i >= 0 && rows.length < 200; i--) {
    const e = list[i];
    const gap = i > 0 ? e.t - list[i - 1].t : (e.n === 1 ? s.ttfe_ms : null);
    const tr = el('tr');
    tr.dataset.n = e.n;
    const time = new Date(e.t).toISOString().slice(11, 23);
    for (const [cls, text] of [['num', e.n], ['time', time], ['num gap', ms(gap)], ['name', e.name],
      ['num', bytes(e.size)], ['data', e.data]]) tr.appendChild(el('td', text, cls));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}
// Bars: the first is the time to first event, each next one the gap before that event, so a burst
// (short bars) or a stall (one tall bar) shows at a glance. Square-root scale, so both stay visible.
function plot(s, list) {
  const svg = $('plot');
  const W = 640, H = 180, L = 44, B = 16, T = 8;
  const shown = list.slice(-160);
  const bars = shown.map((e, i) => {
    const before = list.length - shown.length + i - 1;
    if (before >= 0) return { v: e.t - list[before].t, ttfe: false };
    return { v: e.n === 1 ? (s.ttfe_ms ?? 0) : 0, ttfe: e.n === 1 };
  });
  if (!bars.length && s.ttfe_ms !== null && s.ttfe_ms !== undefined) bars.push({ v: s.ttfe_ms, ttfe: true });
  const max = Math.max(1, ...bars.map((b) => b.v));
  const y = (v) => H - B - Math.sqrt(v / max) * (H - B - T);
  const nodes = [];
  const line = (x1, y1, x2, y2) => {
    const l = document.createElementNS(SVG, 'line');
    for (const [k, v] of Object.entries({ x1, y1, x2, y2 })) l.setAttribute(k, v);
    l.setAttribute('class', 'axis');
    return l;
  };
  const text = (x, yy, t, anchor) => {
    const e = document.createElementNS(SVG, 'text');
    e.setAttribute('x', x); e.setAttribute('y', yy); e.setAttribute('text-anchor', anchor || 'end');
    e.textContent = t;
    return e;
  };
  nodes.push(line(L, T, L, H - B), line(L, H - B, W, H - B));
  nodes.push(text(L - 4, T + 8, ms(max)), text(L - 4, y(max / 4) + 4, ms(max / 4)), text(L - 4, H - B, '0'));
  const step = (W - L - 4) / Math.max(bars.length, 20);
  bars.forEach((b, i) => {
    const r = document.createElementNS(SVG, 'rect');
    const top = y(b.v);
    r.setAttribute('x', (L + 2 + i * step).toFixed(1));
    r.setAttribute('y', top.toFixed(1));
    r.setAttribute('width', Math.max(1, step - 1).toFixed(1));
    r.setAttribute('height', Math.max(1, H - B - top).toFixed(1));
    r.setAttribute('class', b.ttfe ? 'ttfe' : 'gap');
    const title = document.createElementNS(SVG, 'title');
    title.textContent = b.ttfe ? `time to first event ${ms(b.v)}` : `gap ${ms(b.v)}`;
    r.appendChild(title);
    nodes.push(r);
  });
  if (shown.length) nodes.push(text(W - 2, H - 3, `events #${shown[0].n}–#${shown[shown.length - 1].n}`));
  svg.replaceChildren(...nodes);
}

setInterval(schedule, 1000);  // ages and "last event" move on even when nothing arrives
connect();
