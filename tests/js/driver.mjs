// Drives official socket.io-client sockets for the Python tests.
// One JSON command per stdin line: {"id", "cmd", ...}; one JSON reply per stdout line: {"id", "ok", ...}.
// Binary values cross the pipe as {"$bin": "<base64>"} in both directions.
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const { io } = require("socket.io-client");
const msgpackParser = require("socket.io-msgpack-parser");

const sockets = new Map();

function toWire(value) {
  if (value instanceof ArrayBuffer) return { $bin: Buffer.from(value).toString("base64") };
  if (ArrayBuffer.isView(value)) return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  if (Array.isArray(value)) return value.map(toWire);
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = toWire(v);
    return out;
  }
  return value;
}

function fromWire(value) {
  if (Array.isArray(value)) return value.map(fromWire);
  if (value && typeof value === "object") {
    if (typeof value.$bin === "string" && Object.keys(value).length === 1) return new Uint8Array(Buffer.from(value.$bin, "base64"));
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = fromWire(v);
    return out;
  }
  return value;
}

function until(check, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const value = check();
      if (value) return resolve(value);
      if (Date.now() - started > timeoutMs) return reject(new Error(`timeout waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

function record(name, url, opts) {
  const options = { forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 300, timeout: 5000, ...opts };
  if (options.parser === "msgpack") options.parser = msgpackParser;
  else delete options.parser;
  const socket = io(url, options);
  const state = { socket, events: [], connects: 0, recoveredHistory: [], disconnects: [], errors: [], transports: [] };
  socket.on("connect", () => {
    state.connects += 1;
    state.recoveredHistory.push(socket.recovered);
    state.transports.push(socket.io.engine.transport.name);
  });
  socket.on("disconnect", (reason) => state.disconnects.push(reason));
  socket.on("connect_error", (err) => state.errors.push({ message: err.message, data: err.data ?? null }));
  socket.onAny((event, ...args) => state.events.push({ event, args: toWire(args) }));
  sockets.set(name, state);
  return state;
}

function get(name) {
  const state = sockets.get(name);
  if (!state) throw new Error(`no socket named ${name}`);
  return state;
}

function summary(state) {
  const s = state.socket;
  return {
    connected: s.connected, sid: s.id ?? null, recovered: s.recovered, connects: state.connects,
    recoveredHistory: state.recoveredHistory, disconnects: state.disconnects, errors: state.errors,
    transport: s.io.engine ? s.io.engine.transport?.name ?? null : null, transports: state.transports,
  };
}

const commands = {
  async connect({ name, url, opts = {}, timeout = 8000, expectError = false }) {
    const state = record(name, url, fromWire(opts));
    await until(() => state.connects > 0 || state.errors.length > 0, timeout, `connect of ${name}`);
    if (state.connects === 0 && !expectError) state.socket.disconnect();
    return summary(state);
  },
  async emit({ name, event, args = [], ack = true, timeout = 5000 }) {
    const { socket } = get(name);
    const values = fromWire(args);
    if (!ack) { socket.emit(event, ...values); return {}; }
    const result = await socket.timeout(timeout).emitWithAck(event, ...values);
    return { result: result === undefined ? null : toWire(result) };
  },
  async emitMany({ name, event, argsList, ack = true, timeout = 8000 }) {
    const { socket } = get(name);
    const results = await Promise.all(argsList.map((args) =>
      ack ? socket.timeout(timeout).emitWithAck(event, ...fromWire(args)) : (socket.emit(event, ...fromWire(args)), null)));
    return { results: toWire(results) };
  },
  async volatile({ name, event, args = [] }) {
    get(name).socket.volatile.emit(event, ...fromWire(args));
    return {};
  },
  async events({ name, event = null }) {
    const { events } = get(name);
    return { events: event ? events.filter((e) => e.event === event) : events };
  },
  async wait({ name, event, count = 1, timeout = 8000 }) {
    const state = get(name);
    await until(() => state.events.filter((e) => e.event === event).length >= count, timeout,
      `${count} ${event} on ${name}`);
    return { events: state.events.filter((e) => e.event === event) };
  },
  async waitConnects({ name, count, timeout = 10000 }) {
    const state = get(name);
    await until(() => state.connects >= count && state.socket.connected, timeout, `${count} connects of ${name}`);
    return summary(state);
  },
  async waitDisconnects({ name, count = 1, timeout = 10000 }) {
    const state = get(name);
    await until(() => state.disconnects.length >= count, timeout, `${count} disconnects of ${name}`);
    return summary(state);
  },
  async waitErrors({ name, count = 1, timeout = 10000 }) {
    const state = get(name);
    await until(() => state.errors.length >= count, timeout, `${count} connect errors of ${name}`);
    return summary(state);
  },
  async state({ name }) { return summary(get(name)); },
  async clear({ name }) { get(name).events.length = 0; return {}; },
  async close({ name }) { get(name).socket.disconnect(); return summary(get(name)); },
  async disconnect({ name }) { get(name).socket.disconnect(); return {}; },
  async reconnect({ name }) { get(name).socket.connect(); return {}; },
  async eval({ code }) {
    const fn = new Function("ctx", `return (async () => { ${code} })();`);
    return { value: toWire(await fn({ sockets, io, require, until, toWire, fromWire, msgpackParser })) };
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return; }
  const handler = commands[msg.cmd];
  try {
    if (!handler) throw new Error(`unknown command ${msg.cmd}`);
    const out = await handler(msg);
    process.stdout.write(JSON.stringify({ ...out, ok: true, id: msg.id }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ id: msg.id, ok: false, error: String(err && err.message || err) }) + "\n");
  }
});
rl.on("close", () => { for (const { socket } of sockets.values()) socket.disconnect(); process.exit(0); });
