#!/usr/bin/env node
'use strict';
/*
 * Load generator of the `chat` scenario (one process; bench/chat.sh pins it to the client core).
 *
 * A room of --members WebSocket clients; the first --senders of them send messages with an ack,
 * each keeping at most --window messages outstanding (outstanding = not yet acked, or not yet
 * received by every member), for --duration s after --warmup s. Every message reaches every
 * member, the sender included. One JSON line on stdout, in the shape of the shared harness's rows.
 *
 *   --proto chat   this server's documented /chat protocol: `join {room}` (ack {ok:true,...}),
 *                  `message {room, text}` (ack {ok:true, id, seq, ts}), members receive `message`
 *   --proto bench  the Node reference server's /bench: `join "room"` (ack true),
 *                  `fanout {room, payload:{room, text}}` with an ack id (ack true), members receive `msg`
 *
 * The text of every message is "<n>:<send time µs>:<padding>", so a delivery is matched to its
 * message without JSON.parse. Only loopback targets; bounded by time, count and a watchdog.
 */
const { performance } = require('perf_hooks');
const { Client, Samples, measureStart, measureEnd, parseArgs, round } = require('./ws_client');

const DEFAULTS = {
  target: 'unknown', proto: 'chat', host: '127.0.0.1', port: 7400, 'server-pid': 0, rep: 0, tag: '',
  mode: '', members: 100, senders: 1, window: 4, duration: 10, warmup: 2, drain: 10, payload: 100,
  room: 'r', 'connect-timeout': 20, 'hard-timeout': 240, 'max-messages': 2000000,
};
const opt = parseArgs(DEFAULTS, process.argv.slice(2));
if (!/^(127\.\d+\.\d+\.\d+|localhost)$/.test(opt.host)) { console.error(`refusing non-loopback host ${opt.host}`); process.exit(2); }
if (!['chat', 'bench'].includes(opt.proto)) throw new Error('--proto is chat or bench');
if (!(opt.members >= 1 && opt.members <= 255)) throw new Error('--members is 1..255 (deliveries are counted in bytes)');
const NSP = opt.proto === 'chat' ? '/chat' : '/bench';
const DELIVERY_EVENT = opt.proto === 'chat' ? '["message",' : '["msg",';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function out(obj) {
  const row = { target: opt.target, proto: 'sio', client_impl: 'ws', deflate_offered: false, rep: opt.rep,
    ...(opt.tag ? { tag: opt.tag } : {}), ...(opt.mode ? { mode: opt.mode } : {}), ...obj, ts: new Date().toISOString() };
  console.log(JSON.stringify(row));
}
setTimeout(() => { out({ scenario: 'chat', error: `hard timeout ${opt['hard-timeout']}s` }); process.exit(3); },
  opt['hard-timeout'] * 1000).unref();

// ---------------------------------------------------------------- clients: bench/ws_client.js
let unexpectedCloses = 0;
let firstCloseReason = null;
const CLIENT_OPTIONS = {
  host: opt.host, port: opt.port, nsp: NSP, connectTimeout: opt['connect-timeout'], deliveryPrefix: DELIVERY_EVENT,
  onUnexpectedClose: (code) => { unexpectedCloses++; if (!firstCloseReason) firstCloseReason = `close ${code}`; },
};

// acks: chat answers [{"ok":true,...}], the Node reference [true]
const ackOk = (ack) => ack.startsWith('[true]') || ack.startsWith('[{"ok":true');

function joinJson(room) { return opt.proto === 'chat' ? JSON.stringify({ room }) : JSON.stringify(room); }
function sendJson(room, text) {
  const m = JSON.stringify({ room, text });
  return opt.proto === 'chat' ? m : `{"room":${JSON.stringify(room)},"payload":${m}}`;
}
const SEND_EVENT = opt.proto === 'chat' ? 'message' : 'fanout';

async function main() {
  const n = opt.members;
  const clients = [];
  const t0 = performance.now();
  for (let next = 0; next < n;) { // 50 connects in flight at most
    const batch = [];
    for (let k = 0; k < 50 && next < n; k++, next++) { const c = new Client(CLIENT_OPTIONS); clients.push(c); batch.push(c.connect()); }
    await Promise.all(batch);
  }
  const connectWall = (performance.now() - t0) / 1000;
  for (const c of clients) {
    const ack = await c.request('join', joinJson(opt.room));
    if (!ackOk(ack)) throw new Error(`join refused: ${ack.slice(0, 200)}`);
  }
  await sleep(500);

  const MAX = opt['max-messages'];
  const recv = new Uint8Array(MAX);   // deliveries per message (members ≤ 255)
  const acked = new Uint8Array(MAX);
  const owner = new Int32Array(MAX);  // sender index
  const st = { measuring: false, running: true, sent: 0, acks: 0, bad: 0, deliveries: 0,
    ackLat: new Samples(), lat: new Samples(), complete: new Samples(), badDeliveries: 0 };
  const sendT = new Float64Array(MAX);
  const outstanding = new Int32Array(opt.senders);
  const pad = 'y'.repeat(Math.max(0, opt.payload - 30));
  let seq = 0;
  const senders = clients.slice(0, opt.senders);
  const done = (m) => { // acked and received by every member: the sender may send another
    const now = performance.now();
    if (st.measuring) st.complete.push(now - sendT[m]);
    outstanding[owner[m]]--;
    pump(owner[m]);
  };
  const pump = (k) => {
    while (st.running && outstanding[k] < opt.window && seq < MAX) {
      const m = seq++;
      const t = performance.now();
      sendT[m] = t;
      owner[m] = k;
      outstanding[k]++;
      st.sent++;
      senders[k].emit(SEND_EVENT, sendJson(opt.room, `${m}:${Math.round(t * 1000)}:${pad}`), (ack) => {
        if (!ackOk(ack)) st.bad++;
        if (st.measuring) { st.acks++; st.ackLat.push(performance.now() - t); }
        acked[m] = 1;
        if (recv[m] >= n) done(m);
      });
    }
  };
  const onDelivery = (s, i) => {
    const now = performance.now();
    const at = s.indexOf('"text":"', i);
    if (at < 0) return; // presence and other events
    let j = at + 8, m = 0, t = 0, ch;
    while ((ch = s.charCodeAt(j)) >= 48 && ch <= 57) { m = m * 10 + ch - 48; j++; }
    j++;
    while ((ch = s.charCodeAt(j)) >= 48 && ch <= 57) { t = t * 10 + ch - 48; j++; }
    if (m >= seq) { st.badDeliveries++; return; }
    st.deliveries++;
    if (st.measuring) { st.inWindow = (st.inWindow || 0) + 1; st.lat.push(now - t / 1000); }
    if (++recv[m] === n && acked[m]) done(m);
  };
  for (const c of clients) c.onDelivery = onDelivery;
  for (let k = 0; k < senders.length; k++) pump(k);

  await sleep(opt.warmup * 1000);
  const m0 = measureStart();
  st.measuring = true;
  await sleep(opt.duration * 1000);
  st.measuring = false;
  const m = measureEnd(m0, opt['server-pid']);
  st.running = false;
  const tD = performance.now();
  while (st.deliveries < st.sent * n && performance.now() - tD < opt.drain * 1000) await sleep(20);
  out({
    scenario: 'chat', variant: `${opt.senders}x${n}`, namespace: NSP, event: SEND_EVENT,
    members: n, senders: opt.senders, window_per_sender: opt.window, duration_s: m.wall_s,
    acked_messages: st.acks, acks_per_s: round(st.acks / m.wall_s, 1),
    deliveries_in_window: st.inWindow || 0, deliveries_per_s: round((st.inWindow || 0) / m.wall_s, 1),
    ack_lat_ms: st.ackLat.summary(), lat_ms: st.lat.summary(), message_complete_ms: st.complete.summary(),
    sent: st.sent, expected_deliveries: st.sent * n, received_deliveries: st.deliveries,
    drained: st.deliveries >= st.sent * n, bad_acks: st.bad, bad_deliveries: st.badDeliveries,
    server_cpu_pct: m.server_cpu_pct, client_cpu_pct: m.client_cpu_pct, interference: m.interference,
    server_rss_kib: m.server_rss_kib, connect_wall_s: round(connectWall),
    unexpected_closes: unexpectedCloses, close_reason: firstCloseReason,
  });
  for (const c of clients) c.close();
}

main().then(() => process.exit(0), (e) => {
  out({ scenario: 'chat', variant: `${opt.senders}x${opt.members}`, error: String((e && e.stack) || e) });
  process.exit(1);
});
