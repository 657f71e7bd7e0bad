"""/collab against editors who forge: Yjs client ids are bound to the user who first wrote with
them in a document, and ids JavaScript cannot hold exactly are refused (issue #12, item 1).

Real parts only: server processes, Redis, Node yjs editors on the official socket.io-client.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pycrdt
import pytest

from harness import b

EDITORS = """
const Y = ctx.require('yjs');
const { io } = ctx.require('socket.io-client');
globalThis.Y = Y;
globalThis.eds = globalThis.eds || {};
// An editor: one Y.Doc (one Yjs client id for its whole life) and one socket at a time, as the
// demo page; it keeps its guest id by the guest token the server issued, so a reconnect is
// the same user (``guest`` only names the editor in failure messages).
globalThis.makeEditor = async (name, url, guest, docName) => {
  const ed = { name, guest, docName, doc: new Y.Doc(), acks: [], guestToken: null };
  ed.text = ed.doc.getText('text');
  ed.doc.on('update', (update, origin) => {
    if (origin === 'remote' || !ed.socket || !ed.socket.connected) return;
    ed.socket.timeout(5000).emitWithAck('update', { doc: docName, update })
      .then((a) => ed.acks.push(a), () => ed.acks.push({ ok: false, error: { code: 'timeout' } }));
  });
  ed.connect = async (url) => {
    if (ed.socket) ed.socket.disconnect();
    const socket = ctx.io(url, { transports: ['websocket'], forceNew: true, reconnection: false,
                                 auth: ed.guestToken ? { guestToken: ed.guestToken } : {} });
    ed.socket = socket;
    socket.on('update', (u) => {
      if (u.doc === docName) Y.applyUpdate(ed.doc, new Uint8Array(u.update), 'remote');
    });
    await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('connect_error', reject); });
    ed.guestToken = (await socket.emitWithAck('whoami')).guestToken;
    const opened = await socket.emitWithAck('open', { doc: docName });
    Y.applyUpdate(ed.doc, new Uint8Array(opened.update), 'remote');
    // Everything it has, edits made while offline included (README: /collab).
    ed.acks.push(await socket.emitWithAck('update', { doc: docName, update: Y.encodeStateAsUpdate(ed.doc) }));
  };
  globalThis.eds[name] = ed;
  await ed.connect(url);
  return ed.doc.clientID;
};
return true;
"""


async def editor(js: Any, name: str, url: str, guest: str, doc: str = "shared") -> int:
    """Start a Yjs editor in the driver; returns its Yjs client id."""
    if not (await js.call("eval", code="return typeof globalThis.makeEditor === 'function';"))["value"]:
        await js.call("eval", code=EDITORS)
    code = f"return await globalThis.makeEditor({json.dumps(name)}, {json.dumps(url)}, {json.dumps(guest)}, {json.dumps(doc)});"
    return (await js.call("eval", code=code))["value"]


async def type_text(js: Any, name: str, index: int | None, text: str) -> None:
    """The editor inserts ``text`` at ``index`` (None: at the end) and waits for the server's ack."""
    await js.call("eval", code=f"""
        const ed = globalThis.eds[{json.dumps(name)}];
        const before = ed.acks.length;
        const at = {json.dumps(index)};
        ed.text.insert(at === null ? ed.text.length : at, {json.dumps(text)});
        await ctx.until(() => ed.acks.length > before, 5000, 'ack');
        return true;""")


async def acks(js: Any, name: str) -> list[dict[str, Any]]:
    return (await js.call("eval", code=f"return globalThis.eds[{json.dumps(name)}].acks;"))["value"]


async def texts(js: Any, names: list[str]) -> list[str]:
    return (await js.call("eval", code=f"return {json.dumps(names)}.map((n) => globalThis.eds[n].text.toString());"))["value"]


async def converged(js: Any, names: list[str], expected: str) -> list[str]:
    """The editors' texts once they all equal ``expected`` (or after 5 s, whatever they are)."""
    seen: list[str] = []
    for _ in range(50):
        seen = await texts(js, names)
        if seen == [expected] * len(names):
            break
        await asyncio.sleep(0.1)
    return seen


async def document_text(js: Any, name: str, url: str, doc: str = "shared") -> str:
    """The document as a newcomer gets it from the server (``open``), as text."""
    await js.connect(name, url, transports=["websocket"])
    opened = await js.emit(name, "open", {"doc": doc})
    assert opened["ok"], opened
    return (await js.call("eval", code="""
        const Y = ctx.require('yjs');
        const d = new Y.Doc();
        Y.applyUpdate(d, ctx.fromWire(%s));
        return d.getText('text').toString();""" % json.dumps(opened["update"])))["value"]


FORGE = """
// The attacker knows the document (it opened it) and so the victim's client id and next clock.
const Y = globalThis.Y;
const s = ctx.sockets.get(%(socket)s).socket;
const opened = await s.emitWithAck('open', { doc: %(doc)s });
const d = new Y.Doc();
Y.applyUpdate(d, new Uint8Array(opened.update));
const before = Y.encodeStateVector(d);
d.clientID = %(victim)d;
d.getText('text').insert(%(index)d, %(text)s);
return await s.emitWithAck('update', { doc: %(doc)s, update: Y.encodeStateAsUpdate(d, before) });
"""


async def forge(js: Any, socket: str, victim: int, index: int, text: str, doc: str = "shared") -> dict[str, Any]:
    """``socket`` sends an update written under ``victim``'s Yjs client id; returns the ack."""
    return (await js.call("eval", code=FORGE % {"socket": json.dumps(socket), "doc": json.dumps(doc),
                                                "victim": victim, "index": index, "text": json.dumps(text)}))["value"]


def forbidden(ack: dict[str, Any]) -> bool:
    return ack.get("ok") is False and ack.get("error", {}).get("code") == "forbidden_client_id"


async def test_forged_client_id_is_refused_and_everyone_sees_the_same_text(server, js):
    url = server.url + "/collab"
    victim = await editor(js, "victim", url, "guest-victim0001")
    await editor(js, "peer", url, "guest-peer00001")
    await type_text(js, "victim", 0, "hello")
    assert await converged(js, ["victim", "peer"], "hello") == ["hello", "hello"]

    await js.connect("mallory", url, transports=["websocket"], auth={"guest": "guest-mallory01"})
    ack = await forge(js, "mallory", victim, 5, "EVIL")
    assert forbidden(ack), ack
    assert await js.events("mallory", "update") == []

    # The victim goes on typing with its own next clocks: nobody has the forgery in their way.
    await type_text(js, "victim", 5, " world")
    assert (await acks(js, "victim"))[-1]["ok"]
    assert await converged(js, ["victim", "peer"], "hello world") == ["hello world"] * 2
    assert await document_text(js, "late", url) == "hello world"


async def test_reusing_a_client_id_is_refused_on_another_node_and_a_reconnect_keeps_it(servers, redis_url, js):
    env = {"REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    alice = await editor(js, "alice", n1.url + "/collab", "guest-alice0001")
    await editor(js, "bob", n2.url + "/collab", "guest-bob000001")
    await type_text(js, "alice", 0, "draft")
    assert await converged(js, ["alice", "bob"], "draft") == ["draft", "draft"]

    # bob re-sends everything he has (alice's text included) from a fresh connection: nothing
    # new of alice's, so that is fine...
    await js.call("eval", code="await globalThis.eds.bob.connect(%s); return true;" % json.dumps(n2.url + "/collab"))
    assert (await acks(js, "bob"))[-1]["ok"], await acks(js, "bob")
    # ...but writing as alice, on the other node than the one alice wrote through, is not.
    bob_token = (await js.call("eval", code="return globalThis.eds.bob.guestToken;"))["value"]
    await js.connect("bob-raw", n2.url + "/collab", transports=["websocket"], auth={"guestToken": bob_token})
    assert forbidden(await forge(js, "bob-raw", alice, 5, "!!"))

    # alice edits offline, comes back on the other node with the same Y.Doc (the same client id)
    await js.call("eval", code="globalThis.eds.alice.socket.disconnect(); globalThis.eds.alice.text.insert(5, ' v2'); return true;")
    await js.call("eval", code="await globalThis.eds.alice.connect(%s); return true;" % json.dumps(n2.url + "/collab"))
    assert (await acks(js, "alice"))[-1]["ok"], await acks(js, "alice")
    await type_text(js, "alice", None, ".")
    assert all(a["ok"] for a in await acks(js, "alice")), await acks(js, "alice")
    assert await converged(js, ["alice", "bob"], "draft v2.") == ["draft v2."] * 2
    assert await document_text(js, "late", n1.url + "/collab") == "draft v2."


def _varuint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _update_as(client: int, text: str, clock: int = 0) -> bytes:
    """A Yjs update inserting ``text`` into the root text ``text``, written as ``client`` from
    ``clock`` (pycrdt itself refuses ids above 2^53 - 1, yjs does not)."""
    doc = pycrdt.Doc(client_id=1)
    doc.get("text", type=pycrdt.Text).insert(0, text)
    update = doc.get_update()
    assert update[:4] == b"\x01\x01\x01\x00"  # one client, one struct, client 1, clock 0
    return b"\x01\x01" + _varuint(client) + _varuint(clock) + update[4:]


@pytest.mark.parametrize("client", [2**53, 2**53 + 5, 2**64 - 1, 2**70])
async def test_client_ids_javascript_cannot_hold_are_refused(server, js, client):
    url = server.url + "/collab"
    await editor(js, "online", url, "guest-online001")
    await js.connect("mallory", url, transports=["websocket"])
    assert (await js.emit("mallory", "open", {"doc": "shared"}))["ok"]
    # pycrdt reads 2^53 as client 0 and yjs as 2^53: the server's merged state (what late
    # joiners get) and what online editors applied would be two documents.
    ack = await js.emit("mallory", "update", {"doc": "shared", "update": b(_update_as(client, "EVIL"))})
    assert forbidden(ack), ack
    await type_text(js, "online", 0, "mine")
    assert await converged(js, ["online"], "mine") == ["mine"]
    assert await document_text(js, "late", url) == "mine"


async def test_ids_and_clocks_in_range_are_accepted_others_are_not(server, js):
    await js.connect("w", server.url + "/collab", transports=["websocket"])
    assert (await js.emit("w", "open", {"doc": "edge"}))["ok"]
    largest = await js.emit("w", "update", {"doc": "edge", "update": b(_update_as(2**53 - 1, "ok"))})
    assert largest["ok"], largest
    # yrs keeps clocks in 32 bits (2^32 would be clock 0 there, a gap for yjs)
    ack = await js.emit("w", "update", {"doc": "edge", "update": b(_update_as(77, "x", clock=2**32))})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_update", ack
    # bytes after the end of an update are not a Yjs update
    ack = await js.emit("w", "update", {"doc": "edge", "update": b(_update_as(78, "y") + b"\x00")})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_update", ack


CONTENT_KINDS = """
// Every kind of Yjs content an editor can produce (strings with surrogate pairs, formats,
// embeds, maps and arrays of any values, XML, subdocuments) and deletions.
const Y = ctx.require('yjs');
const s = ctx.sockets.get('kinds').socket;
const d = new Y.Doc();
const acks = [];
d.on('update', (u) => acks.push(s.emitWithAck('update', { doc: 'kinds', update: u })));
const t = d.getText('text');
t.insert(0, 'h\u00e9llo \ud83d\ude00 w\u00f6rld'); t.format(0, 3, { bold: true }); t.insertEmbed(2, { image: 'x.png' });
t.delete(1, 4);
const m = d.getMap('m');
m.set('a', { x: [1, 2.5, -7, 123456789012, null, true, false, 'str', new Uint8Array([1, 2])], y: { z: 'deep' } });
m.set('big', 2n ** 60n); m.set('b', new Uint8Array([9, 9, 9]));
const arr = d.getArray('arr'); arr.insert(0, [1, 'two', { three: 3 }, [4]]); arr.insert(1, [new Y.Map()]); arr.delete(0, 1);
const x = d.getXmlFragment('xml'); const el = new Y.XmlElement('p'); el.setAttribute('class', 'c');
x.insert(0, [el, new Y.XmlText('txt')]); el.insert(0, [new Y.XmlText('inner')]);
m.set('sub', new Y.Doc());
const results = await Promise.all(acks);
globalThis.kindsDoc = d;
return results;
"""


async def test_every_kind_of_yjs_content_is_accepted(server, js):
    await js.connect("kinds", server.url + "/collab", transports=["websocket"])
    assert (await js.emit("kinds", "open", {"doc": "kinds"}))["ok"]
    results = (await js.call("eval", code=CONTENT_KINDS))["value"]
    assert results and all(r["ok"] for r in results), results
    state = (await js.call("eval", code="""
        const Y = ctx.require('yjs');
        return Y.encodeStateAsUpdate(globalThis.kindsDoc);"""))["value"]
    # the same content again, whole: known, so accepted (and nothing new is stored)
    again = await js.emit("kinds", "update", {"doc": "kinds", "update": state})
    assert again["ok"], again
