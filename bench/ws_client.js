'use strict';
/*
 * What bench/chat_loadgen.js, bench/echo_id_loadgen.js and bench/publish_clients.js share: a
 * minimal Socket.IO client over `ws` (no socket.io-client overhead on the load generator's core),
 * their option parser, the latency summary of their JSON lines, and the server's CPU and memory
 * measured as the shared harness measures them.
 */
const fs = require('fs');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const round = (x, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

/** `--name value` pairs over DEFAULTS (numbers stay numbers); an unknown option throws. */
function parseArgs(defaults, argv) {
  const o = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '');
    if (!(k in defaults) || argv[i + 1] === undefined) throw new Error(`bad option ${argv[i]}`);
    o[k] = typeof defaults[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return o;
}

/** Samples in ms -> {n, p50, p90, p99, max} (null when empty), as publish_driver.py's quantiles. */
function summary(samples) {
  if (samples.length === 0) return null;
  const s = Float64Array.from(samples).sort();
  const q = (p) => round(s[Math.min(s.length - 1, Math.floor(p * s.length))]);
  return { n: s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: round(s[s.length - 1]) };
}

/** Latency samples in ms, summarised as `summary` does. */
class Samples {
  constructor() { this.a = []; }
  push(v) { this.a.push(v); }
  summary() { return summary(this.a); }
}

// ---------------------------------------------------------------- CPU and memory, as the harness measures them
const CLK_TCK = 100;
function stat(pid) { // [ppid, utime+stime] or null
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return [Number(f[1]), Number(f[11]) + Number(f[12])];
  } catch { return null; }
}
function allProcs() { // pid -> [ppid, ticks]
  const m = new Map();
  for (const d of fs.readdirSync('/proc')) if (/^\d+$/.test(d)) { const s = stat(d); if (s) m.set(Number(d), s); }
  return m;
}
function tree(procs, root) { // the root and its descendants
  const set = new Set([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, [ppid]] of procs) if (!set.has(pid) && set.has(ppid)) { set.add(pid); grew = true; }
  }
  return set;
}
function rssKiB(pids) {
  let kib = 0;
  for (const p of pids) {
    try { const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/status`, 'latin1')); if (m) kib += Number(m[1]); } catch { /* gone */ }
  }
  return kib;
}
/** The start of a measurement window (pass it to measureEnd). */
function measureStart() { return { t: performance.now(), cpu: process.cpuUsage(), procs: allProcs() }; }
/** The window's wall time, the CPU of the server's process tree (rooted at serverPid, 0: none),
 * of this process and of every other process (interference), and the server's RSS. */
function measureEnd(m0, serverPid) {
  const wall = (performance.now() - m0.t) / 1000;
  const procs = allProcs();
  const server = serverPid ? tree(procs, serverPid) : new Set();
  let srv = 0, other = 0;
  for (const [pid, [ppid, ticks]] of procs) {
    const d = ticks - (m0.procs.has(pid) ? m0.procs.get(pid)[1] : 0);
    if (d <= 0 || pid === process.pid) continue;
    if (server.has(pid)) srv += d; else if (pid !== 2 && ppid !== 2) other += d;
  }
  const c = process.cpuUsage(m0.cpu);
  return {
    wall_s: round(wall), server_cpu_pct: serverPid ? round((100 * srv / CLK_TCK) / wall, 1) : null,
    client_cpu_pct: round((100 * (c.user + c.system) / 1e6) / wall, 1),
    interference: { other_procs_cpu_pct: round((100 * other / CLK_TCK) / wall, 1) },
    server_rss_kib: serverPid ? rssKiB(server) : null,
  };
}

/**
 * One WebSocket Engine.IO/Socket.IO client in namespace `nsp`.
 *
 * options: host, port, nsp, connectTimeout (s), deliveryPrefix (the start of the EVENT packets
 * handed to onDelivery, e.g. '["message",'), onDelivery(packet, i) (i: where the event's JSON
 * array starts in packet), onUnexpectedClose(code) (the server closed a connected client).
 */
class Client {
  constructor(options) {
    this.o = options;
    this.acks = new Map();
    this.nextId = 0;
    this.closing = false;
    this.connected = false;
    this.onDelivery = options.onDelivery || null;
  }

  connect() {
    const { host, port, nsp } = this.o;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${host}:${port}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false });
      this.ws = ws;
      const timer = setTimeout(() => { reject(new Error('connect timeout')); ws.terminate(); }, this.o.connectTimeout * 1000);
      ws.on('message', (data) => {
        const s = data.toString();
        if (s[0] === '2') { ws.send('3'); return; } // Engine.IO ping
        if (s[0] === '0') { ws.send(`40${nsp},`); return; } // Engine.IO open: join the namespace
        if (!s.startsWith(nsp, 2)) return;
        const type = s[1];
        const i = 2 + nsp.length + 1;
        if (type === '2') { // EVENT
          if (this.onDelivery !== null && s.startsWith(this.o.deliveryPrefix, i)) this.onDelivery(s, i);
        } else if (type === '3') { // ACK
          let j = i, id = 0;
          while (s.charCodeAt(j) >= 48 && s.charCodeAt(j) <= 57) id = id * 10 + s.charCodeAt(j++) - 48;
          const cb = this.acks.get(id);
          if (cb) { this.acks.delete(id); cb(s.slice(j)); }
        } else if (type === '0') { clearTimeout(timer); this.connected = true; resolve(); }
        else if (type === '4') { clearTimeout(timer); reject(new Error(`connect_error ${s.slice(0, 200)}`)); }
      });
      ws.on('error', (e) => { clearTimeout(timer); if (!this.connected) reject(e); });
      ws.on('close', (code) => {
        if (this.connected && !this.closing && this.o.onUnexpectedClose) this.o.onUnexpectedClose(code);
      });
    });
  }

  /** Sends `event` with `json` (the argument, already encoded) and an ack id; cb(the ack's text). */
  emit(event, json, cb) {
    const id = this.nextId++;
    this.acks.set(id, cb);
    this.ws.send(`42${this.o.nsp},${id}["${event}",${json}]`);
  }

  /** emit as a promise of the ack's text; rejects after 20 s. */
  request(event, json) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${event} timeout`)), 20000);
      this.emit(event, json, (ack) => { clearTimeout(t); resolve(ack); });
    });
  }

  close() { this.closing = true; this.ws.terminate(); }
}

module.exports = { Client, Samples, measureStart, measureEnd, parseArgs, round, summary };
