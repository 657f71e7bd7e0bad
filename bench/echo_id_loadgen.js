#!/usr/bin/env node
'use strict';
/*
 * Load generator of the `echo-id` scenario (one process; bench/chat.sh pins it to the client core):
 * the shared harness's echo (--clients WebSocket clients in /bench, each sending `echo` with an
 * ack, one at a time, a --payload-byte object) with a fresh `eventId` in every payload, so this
 * server applies each event once (its event-ID dedupe: the first ack kept and given again to a
 * retry). The Node reference echoes the payload as it echoes any. With `--ids 0` the same load
 * without the IDs: our own figure without the guarantee, for its cost in the same run.
 *
 * One JSON line on stdout, in the shape of the harness's rows (acks_per_s, lat_ms). Only loopback
 * targets; bounded by time, count and a watchdog.
 */
const { performance } = require('perf_hooks');
const { Client, Samples, measureStart, measureEnd, parseArgs, round } = require('./ws_client');

const DEFAULTS = {
  target: 'unknown', host: '127.0.0.1', port: 7400, 'server-pid': 0, rep: 0, tag: '', mode: '', ids: 1,
  clients: 100, duration: 10, warmup: 3, payload: 100, 'connect-timeout': 20, 'hard-timeout': 120,
};
const opt = parseArgs(DEFAULTS, process.argv.slice(2));
if (!/^(127\.\d+\.\d+\.\d+|localhost)$/.test(opt.host)) { console.error(`refusing non-loopback host ${opt.host}`); process.exit(2); }
const SCENARIO = opt.ids ? 'echo-id' : 'echo-plain';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function out(obj) {
  const row = { target: opt.target, proto: 'sio', client_impl: 'ws', deflate_offered: false, rep: opt.rep,
    ...(opt.tag ? { tag: opt.tag } : {}), ...(opt.mode ? { mode: opt.mode } : {}), scenario: SCENARIO, ...obj,
    ts: new Date().toISOString() };
  console.log(JSON.stringify(row));
}
setTimeout(() => { out({ error: `hard timeout ${opt['hard-timeout']}s` }); process.exit(3); },
  opt['hard-timeout'] * 1000).unref();

let unexpectedCloses = 0;
const CLIENT_OPTIONS = {
  host: opt.host, port: opt.port, nsp: '/bench', connectTimeout: opt['connect-timeout'], deliveryPrefix: '[',
  onUnexpectedClose: () => { unexpectedCloses++; },
};

async function main() {
  const clients = [];
  for (let next = 0; next < opt.clients;) { // 50 connects in flight at most
    const batch = [];
    for (let k = 0; k < 50 && next < opt.clients; k++, next++) {
      const c = new Client(CLIENT_OPTIONS); clients.push(c); batch.push(c.connect());
    }
    await Promise.all(batch);
  }
  // The payload is an object of about --payload bytes, as the harness's; the ID is unique per
  // event across clients and runs (a server keeps earlier IDs' acks for a while).
  const run = `${process.pid}-${Date.now().toString(36)}`;
  const pad = 'x'.repeat(Math.max(0, opt.payload - 60));
  const st = { measuring: false, running: true, acks: 0, bad: 0, lat: new Samples() };
  const loop = (c, k) => {
    let n = 0;
    const next = () => {
      if (!st.running) return;
      const id = opt.ids ? `"eventId":"${run}-${k}-${n++}",` : '';
      const json = `{${id}"k":${k},"p":"${pad}"}`;
      const t = performance.now();
      c.emit('echo', json, (ack) => {
        if (!ack.startsWith(`[{${id}`)) st.bad++;
        if (st.measuring) { st.acks++; st.lat.push(performance.now() - t); }
        next();
      });
    };
    next();
  };
  clients.forEach(loop);
  await sleep(opt.warmup * 1000);
  const m0 = measureStart();
  st.measuring = true;
  await sleep(opt.duration * 1000);
  st.measuring = false;
  const m = measureEnd(m0, opt['server-pid']);
  st.running = false;
  out({
    clients: opt.clients, event_ids: Boolean(opt.ids), duration_s: m.wall_s, acks_per_s: round(st.acks / m.wall_s, 1),
    lat_ms: st.lat.summary(), bad_acks: st.bad, server_cpu_pct: m.server_cpu_pct, client_cpu_pct: m.client_cpu_pct,
    interference: m.interference, server_rss_kib: m.server_rss_kib, unexpected_closes: unexpectedCloses,
  });
  for (const c of clients) c.close();
}

main().then(() => process.exit(0), (e) => {
  out({ error: String((e && e.stack) || e) });
  process.exit(1);
});
