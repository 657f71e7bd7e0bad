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
 * With --rooms R > 1, client k joins `<room>-<k % R>` instead (--clients a multiple of R), the
 * publisher sends each phase round-robin over the R rooms (`count` a multiple of R), and each
 * client expects count / R of them (bench/cluster_driver.py: channels spread over a cluster).
 * The clients are bench/ws_client.js's minimal Socket.IO client over `ws`.
 */
const readline = require('readline');
const { performance } = require('perf_hooks');
const { Client, parseArgs, summary } = require('./ws_client');

const DEFAULTS = { host: '127.0.0.1', port: 7400, clients: 10, room: 'pub', rooms: 1, drain: 20, 'connect-timeout': 20,
  'hard-timeout': 900 };
const opt = parseArgs(DEFAULTS, process.argv.slice(2));
if (!/^(127\.\d+\.\d+\.\d+|localhost)$/.test(opt.host)) { console.error(`refusing non-loopback host ${opt.host}`); process.exit(2); }
if (!(opt.rooms >= 1 && opt.clients % opt.rooms === 0)) { console.error('--clients must be a multiple of --rooms'); process.exit(2); }
setTimeout(() => { console.log(JSON.stringify({ error: `hard timeout ${opt['hard-timeout']}s` })); process.exit(3); },
  opt['hard-timeout'] * 1000).unref();
const NSP = '/chat';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// wall clock in µs with sub-ms resolution (the publisher's time.time_ns() // 1000 on the same clock)
const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;

class Phase {
  constructor() { this.lat = []; this.deliveries = 0; this.perClient = new Map(); }
  summary() { return summary(this.lat); }
}
const phases = new Map();
const phase = (name) => { if (!phases.has(name)) phases.set(name, new Phase()); return phases.get(name); };
let outOfOrder = 0;
let unexpectedCloses = 0;

const roomOf = (k) => (opt.rooms > 1 ? `${opt.room}-${k % opt.rooms}` : opt.room);

/** One member: counts and times every `pub` event and checks offsets increase. */
class Member {
  constructor(k) {
    this.k = k;
    this.lastOffset = 0;
    this.client = new Client({ host: opt.host, port: opt.port, nsp: NSP, connectTimeout: opt['connect-timeout'],
      deliveryPrefix: '["pub",', onDelivery: (s, i) => this.onPub(s.slice(i)),
      onUnexpectedClose: () => { unexpectedCloses++; } });
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
}

async function report(name, count) {
  const ph = phase(name);
  const each = count / opt.rooms; // per client
  const expected = each * opt.clients;
  const t0 = performance.now();
  while (ph.deliveries < expected && performance.now() - t0 < opt.drain * 1000) await sleep(10);
  let missingClients = 0;
  for (let k = 0; k < opt.clients; k++) if ((ph.perClient.get(k) || 0) < each) missingClients++;
  console.log(JSON.stringify({ phase: name, expected_deliveries: expected, deliveries: ph.deliveries,
    complete: ph.deliveries >= expected, clients_short: missingClients, lat_ms: ph.summary(),
    out_of_order: outOfOrder, unexpected_closes: unexpectedCloses }));
  phases.delete(name);
}

async function main() {
  const members = [];
  for (let k = 0; k < opt.clients; k++) members.push(new Member(k));
  const clients = members.map((m) => m.client);
  for (let k = 0; k < clients.length; k += 50) await Promise.all(clients.slice(k, k + 50).map((c) => c.connect()));
  for (const [k, c] of clients.entries()) {
    const ack = await c.request('join', JSON.stringify({ room: roomOf(k) }));
    if (!ack.startsWith('[{"ok":true')) throw new Error(`join refused: ${ack.slice(0, 200)}`);
  }
  console.log(JSON.stringify({ ready: true, clients: opt.clients, room: opt.room, rooms: opt.rooms }));
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
