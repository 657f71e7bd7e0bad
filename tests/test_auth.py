"""Token authentication per namespace with the official JS client: HS256 and RS256, key
rotation by kid, exp/nbf/audience, AUTH_REQUIRED, renewal without reconnecting, expiry."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SECRET_OLD = "old-hmac-secret-that-is-at-least-32-bytes"
SECRET_NEW = "new-hmac-secret-that-is-at-least-32-bytes"


@pytest.fixture(scope="module")
def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, public


@pytest.fixture
def auth_server(servers, rsa_key, tmp_path):
    _, public = rsa_key
    pem = tmp_path / "public.pem"
    pem.write_text(public)
    cfg = tmp_path / "auth.toml"
    cfg.write_text(f'''
[auth]
required = ["/chat", "/collab"]
audience = "realtime"
leeway = 0
keys = [
  {{ kid = "2026-10", algorithm = "HS256", key = "{SECRET_OLD}" }},
  {{ kid = "2026-11", algorithm = "HS256", key = "{SECRET_NEW}" }},
  {{ kid = "rsa-1", algorithm = "RS256", key_file = "{pem}" }},
]
''')
    return servers(args=["--config", str(cfg)])


def token(kid="2026-11", secret=SECRET_NEW, alg="HS256", key=None, **claims):
    body = {"sub": "dana", "name": "Dana", "aud": "realtime", "exp": time.time() + 600, "iat": time.time()}
    body.update(claims)
    return jwt.encode(body, key or secret, algorithm=alg, headers={"kid": kid})


async def refused(js, server, name, auth, ns="/chat"):
    state = await js.connect(name, server.url + ns, transports=["websocket"], auth=auth, expect_error=True)
    assert not state["connected"]
    return state["errors"][0]


async def test_valid_tokens_of_every_key_are_accepted(auth_server, js, rsa_key):
    key, _ = rsa_key
    for i, tok in enumerate((token(), token(kid="2026-10", secret=SECRET_OLD),
                             token(kid="rsa-1", alg="RS256", key=key))):
        state = await js.connect(f"c{i}", auth_server.url + "/chat", transports=["websocket"], auth={"token": tok})
        assert state["connected"]
        me = await js.emit(f"c{i}", "whoami")
        assert me["user"] == "dana" and me["name"] == "Dana" and me["guest"] is False


# Each auth is made when its test runs, not at collection: a token minted then (exp now + 600 s)
# would have expired by the time a late test of a long run uses it.
BAD_TOKENS = [
    ("no token", lambda: {}, "token_required"),
    ("expired", lambda: {"token": token(exp=time.time() - 10)}, "token_expired"),
    ("not yet valid", lambda: {"token": token(nbf=time.time() + 600)}, "invalid_token"),
    ("wrong audience", lambda: {"token": token(aud="someone-else")}, "invalid_token"),
    ("unknown kid", lambda: {"token": token(kid="2025-01")}, "invalid_token"),
    ("wrong secret", lambda: {"token": token(secret="x" * 40)}, "invalid_token"),
    ("alg none", lambda: {"token": jwt.encode({"sub": "x", "exp": time.time() + 60}, None, algorithm="none")},
     "invalid_token"),
    ("garbage", lambda: {"token": "not.a.jwt"}, "invalid_token"),
    ("not a string", lambda: {"token": 42}, "invalid_token"),
    ("namespace not allowed", lambda: {"token": token(namespaces=["/game"])}, "forbidden"),
]


@pytest.mark.parametrize("case,auth,code", BAD_TOKENS, ids=[case for case, _, _ in BAD_TOKENS])
async def test_bad_tokens_are_refused_with_a_code(auth_server, js, case, auth, code):
    error = await refused(js, auth_server, "x", auth())
    assert error["data"]["code"] == code, (case, error)


async def test_rs256_key_cannot_be_used_as_an_hmac_secret(auth_server, js, rsa_key):
    _, public = rsa_key
    import base64
    import hashlib
    import hmac
    import json

    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"sub": "eve", "aud": "realtime",
                                                "exp": time.time() + 60}).encode()).rstrip(b"=")
    sig = base64.urlsafe_b64encode(hmac.new(public.encode(), header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
    error = await refused(js, auth_server, "eve", {"token": (header + b"." + body + b"." + sig).decode()})
    assert error["data"]["code"] == "invalid_token"


async def test_guests_only_where_tokens_are_not_required(auth_server, js):
    state = await js.connect("g", auth_server.url + "/game", transports=["websocket"])
    assert state["connected"] and (await js.emit("g", "whoami"))["guest"] is True
    await refused(js, auth_server, "c", {}, ns="/collab")


async def test_room_claims_limit_rooms(auth_server, js):
    await js.connect("c", auth_server.url + "/chat", transports=["websocket"],
                     auth={"token": token(rooms=["team-"])})
    assert (await js.emit("c", "join", {"room": "team-blue"}))["ok"]
    denied = await js.emit("c", "join", {"room": "general"})
    assert denied["ok"] is False and denied["error"]["code"] == "forbidden"


async def test_auth_required_from_the_environment(servers, js, tmp_path):
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[auth]\nkeys = [{{ kid = "k", algorithm = "HS256", key = "{SECRET_NEW}" }}]\n')
    srv = servers(env={"AUTH_REQUIRED": "true"}, args=["--config", str(cfg)])
    for ns in ("/chat", "/game", "/collab"):
        error = await refused(js, srv, ns, {}, ns=ns)
        assert error["data"]["code"] == "token_required"


async def test_renewal_without_reconnecting_and_expiry(auth_server, js):
    short = token(exp=time.time() + 2)
    await js.connect("c", auth_server.url + "/chat", transports=["websocket"], auth={"token": short})
    await js.connect("d", auth_server.url + "/chat", transports=["websocket"], auth={"token": short})
    first = await js.state("c")
    renewed = await js.emit("c", "auth", {"token": token(exp=time.time() + 600)})
    assert renewed["ok"] and renewed["expires"] > time.time() + 500
    other_user = await js.emit("c", "auth", {"token": token(sub="mallory")})
    assert other_user["ok"] is False and other_user["error"]["code"] == "forbidden"
    # d did not renew: it is told why, then disconnected
    [expired] = await js.wait("d", "session_expired", 1, timeout=6000)
    assert expired["args"][0]["code"] == "token_expired"
    state = await js.call("waitDisconnects", name="d", count=1)
    assert state["disconnects"] == ["io server disconnect"]
    await asyncio.sleep(0.5)
    after = await js.state("c")
    assert after["connected"] and after["sid"] == first["sid"] and after["connects"] == 1
