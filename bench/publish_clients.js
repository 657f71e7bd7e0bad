#!/usr/bin/env node
'use strict';
/*
 * The receiving side of the `publish` scenario (bench/publish.sh starts it from
 * bench/publish_driver.py, on the load generator's core): --clients WebSocket clients join one
 * /chat room through the documented protocol (`join {room}`), then count and time every `pub`
 * event the publisher sends to that room through an emitter or the HTTP API.
 *
 * Each publication's argument is {"p": phase, "i": n, "t": publish time in µs since the epoch}
 * (taken by the publisher just before its emit call, same machine clock), followed by the event's
 * offset string "<offset>~<tag>". Latency = receipt wall time - t, per client and publication.
 *
 * Protocol on stdio (one line each): prints {"ready": true, ...} once every client has joined;
 * reads `end <phase> <count>` and answers with one JSON line for that phase once every client
 * has received `count` publications of it (or --drain s passed): deliveries, latency p50/p90/p99/
 * max in ms, and the channel-order check (offsets strictly increasing per client).
 * The minimal Socket.IO client over `ws` is chat_loadgen.js's approach (no socket.io-client
 * overhead on the shared core).
 */
const readline = require('readline');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const DEFAULTS = { host: '127.0.0.1', port: 7400, clients: 10, room: 'pub', drain: 20, 'connect-timeout': 20,
  'hard-timeout': 900 };
const opt = { ...DEFAULTS };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, '');
  if (!(k in DEFAULTS) || argv[i + 1] === undefined) throw new Error(`bad option ${argv[i]}`);
  opt[k] = typeof DEFAULTS[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}
if (!/^(127\.\d+\.\d+\.\d+|localhost)$/.test(opt.host)) { console.error(`refusing non-loopback host ${opt.host}`); process.exit(2); }
setTimeout(() => { console.log(JSON.stringify({ error: `hard timeout ${opt['hard-timeout']}s` })); process.exit(3); },
  opt['hard-timeout'] * 1000).unref();
const NSP = '/chat';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round = (x, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
// wall clock in µs with sub-ms resolution (the publisher's time.time_ns() // 1000 on the same clock)
const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;

class Phase {
  constructor() { this.lat = []; this.deliveries = 0; this.perClient = new Map(); }
  summary() {
    if (this.lat.length === 0) return null;
    const s = Float64Array.from(this.lat).sort();
    const q = (p) => round(s[Math.min(s.length - 1, Math.floor(p * s.length))]);
    return { n: s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: round(s[s.length - 1]) };
  }
}
const phases = new Map();
const phase = (name) => { if (!phases.has(name)) phases.set(name, new Phase()); return phases.get(name); };
let outOfOrder = 0;
let unexpectedCloses = 0;

const PUB = '["pub",';
class Client {
  constructor(k) { this.k = k; this.acks = new Map(); this.nextId = 0; this.lastOffset = 0; this.closing = false; }
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${opt.host}:${opt.port}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false });
      this.ws = ws;
      const timer = setTimeout(() => { reject(new Error('connect timeout')); ws.terminate(); }, opt['connect-timeout'] * 1000);
      ws.on('message', (data) => {
        const s = data.toString();
        if (s[0] === '2') { ws.send('3'); return; } // Engine.IO ping
        if (s[0] === '0') { ws.send(`40${NSP},`); return; } // Engine.IO open: join the namespace
        if (!s.startsWith(NSP, 2)) return;
        const type = s[1];
        const i = 2 + NSP.length + 1;
        if (type === '2') { if (s.startsWith(PUB, i)) this.onPub(s.slice(i)); } // EVENT
        else if (type === '3') { // ACK
          let j = i, id = 0;
          while (s.charCodeAt(j) >= 48 && s.charCodeAt(j) <= 57) id = id * 10 + s.charCodeAt(j++) - 48;
          const cb = this.acks.get(id);
          if (cb) { this.acks.delete(id); cb(s.slice(j)); }
        } else if (type === '0') { clearTimeout(timer); this.connected = true; resolve(); }
        else if (type === '4') { clearTimeout(timer); reject(new Error(`connect_error ${s.slice(0, 200)}`)); }
      });
      ws.on('error', (e) => { clearTimeout(timer); if (!this.connected) reject(e); });
      ws.on('close', () => { if (this.connected && !this.closing) unexpectedCloses++; });
    });
  }
  onPub(body) {
    const now = nowUs();
    const [, arg, offset] = JSON.parse(body); // ["pub", {p, i, t}, "<offset>~<tag>"]
    const ph = phase(arg.p);
    ph.deliveries++;
    ph.perClient.set(this.k, (ph.perClient.get(this.k) || 0) + 1);
    ph.lat.push((now - arg.t) / 1000);
    const off = parseInt(offset, 10);
    if (!(off > this.lastOffset)) outOfOrder++;
    this.lastOffset = off;
  }
  request(event, json) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${event} timeout`)), 20000);
      const id = this.nextId++;
      this.acks.set(id, (ack) => { clearTimeout(t); resolve(ack); });
      this.ws.send(`42${NSP},${id}["${event}",${json}]`);
    });
  }
  close() { this.closing = true; this.ws.terminate(); }
}

async function report(name, count) {
  const ph = phase(name);
  const expected = count * opt.clients;
  const t0 = performance.now();
  while (ph.deliveries < expected && performance.now() - t0 < opt.drain * 1000) await sleep(10);
  let missingClients = 0;
  for (let k = 0; k < opt.clients; k++) if ((ph.perClient.get(k) || 0) < count) missingClients++;
  console.log(JSON.stringify({ phase: name, expected_deliveries: expected, deliveries: ph.deliveries,
    complete: ph.deliveries >= expected, clients_short: missingClients, lat_ms: ph.summary(),
    out_of_order: outOfOrder, unexpected_closes: unexpectedCloses }));
  phases.delete(name);
}

async function main() {
  const clients = [];
  for (let k = 0; k < opt.clients; k++) clients.push(new Client(k));
  await Promise.all(clients.map((c) => c.connect()));
  for (const c of clients) {
    const ack = await c.request('join', JSON.stringify({ room: opt.room }));
    if (!ack.startsWith('[{"ok":true')) throw new Error(`join refused: ${ack.slice(0, 200)}`);
  }
  console.log(JSON.stringify({ ready: true, clients: opt.clients, room: opt.room }));
  const rl = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  rl.on('line', (line) => {
    const [cmd, name, count] = line.trim().split(/\s+/);
    if (cmd === 'end') queue = queue.then(() => report(name, Number(count)));
    else if (cmd === 'quit') queue.then(() => { for (const c of clients) c.close(); process.exit(0); });
  });
  rl.on('close', () => queue.then(() => process.exit(0)));
}

main().catch((e) => { console.log(JSON.stringify({ error: String((e && e.stack) || e) })); process.exit(1); });
