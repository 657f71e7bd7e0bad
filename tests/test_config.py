"""Configuration: one source, environment overrides, a clear one-line error for each mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT, ServerProcess, free_port
from server.config import ConfigError, load_config


def run_server(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=30)


@pytest.mark.parametrize("env,fragment", [
    ({"PORT": "http"}, "server.port (from $PORT): expected an integer, got 'http'"),
    ({"PORT": "70000"}, "server.port (from $PORT): must be between 0 and 65535, got 70000"),
    ({"LOG_LEVEL": "loud"}, "server.log_level (from $LOG_LEVEL): must be one of"),
    ({"REDIS_URL": "localhost:6379"}, "redis.url (from $REDIS_URL): must start with one of"),
    ({"REDIS_URL": "redis+cluster://h1:7000,h2"}, "redis.url (from $REDIS_URL): a cluster URL lists seed nodes"),
    ({"REDIS_URL": "redis+cluster://h1:7000/2"}, "redis.url (from $REDIS_URL): a Redis Cluster has only database 0"),
    ({"REDIS_REPLICAS_ACK": "-1"}, "redis.replicas_ack (from $REDIS_REPLICAS_ACK): must be between 0 and 16"),
    ({"REDIS_REPLICAS_ACK": "one"}, "redis.replicas_ack (from $REDIS_REPLICAS_ACK): expected an integer"),
    ({"CORS_ORIGINS": "example.com"}, "server.cors_origins (from $CORS_ORIGINS): origin 'example.com'"),
    ({"AUTH_REQUIRED": "true"}, "auth.required"),
    ({"PARSER": "xml"}, "server.parser (from $PARSER): must be one of json, msgpack"),
    ({"ADVERTISE_ADDRESS": "nohost"}, "server.advertise_address (from $ADVERTISE_ADDRESS): expected host:port"),
])
def test_bad_environment_stops_startup_with_one_clear_line(env, fragment):
    out = run_server(env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: ") and fragment in lines[0], out.stderr


def test_bad_file_values_name_the_file_and_key(tmp_path: Path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nport = 8000\nping_interval = "soon"\n')
    out = run_server({}, "--config", str(cfg))
    assert out.returncode == 2
    assert f"server.ping_interval (from {cfg}): expected a number, got 'soon'" in out.stderr
    cfg.write_text("[server]\nprot = 1\n")
    assert "server.prot in" in run_server({}, "--config", str(cfg)).stderr
    cfg.write_text("[srever]\n")
    assert "unknown section" in run_server({}, "--config", str(cfg)).stderr
    cfg.write_text("[server\n")
    assert "not valid TOML" in run_server({}, "--config", str(cfg)).stderr
    assert "no such file" in run_server({}, "--config", str(tmp_path / "missing.toml")).stderr


def test_env_overrides_file(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nport = 1234\nlog_level = "debug"\n[delivery]\ndurable_namespaces = ["/chat"]\n')
    config = load_config(cfg, {"PORT": "4321", "CORS_ORIGINS": "https://a.example, https://b.example"})
    assert config.server.port == 4321
    assert config.server.log_level == "debug"
    assert config.server.cors_origins == ("https://a.example", "https://b.example")
    assert config.delivery.durable_namespaces == ("/chat",)
    with pytest.raises(ConfigError, match="unknown namespace '/nope'"):
        load_config(cfg, {"AUTH_REQUIRED": "/nope"})


@pytest.mark.parametrize("url", ["redis+cluster://10.0.0.1:7000,10.0.0.2:7001", "rediss+cluster://u:p@h:7000/0",
                                 "valkey+cluster://h:7000", "redis://h:6379/0", "valkey://h:6379"])
def test_redis_urls_of_every_kind_are_accepted(url):
    assert load_config(None, {"REDIS_URL": url}).redis.url == url


async def test_a_valkey_url_gives_a_working_client(redis_url):
    from server.stores import redis_client

    client = redis_client(redis_url.replace("redis://", "valkey://", 1))
    try:
        assert await client.ping()
    finally:
        await client.aclose()


def test_a_node_started_on_a_plain_url_to_a_cluster_node_runs_in_cluster_mode(redis_cluster, cluster_url):
    """Start-up recognises the cluster (and builds every store on a cluster client)."""
    from server.cluster_client import BoundedRedisCluster
    from server.stores import build_stores

    stores = build_stores(load_config(None, {"REDIS_URL": cluster_url}))
    assert isinstance(stores.redis, BoundedRedisCluster)
    assert stores.presence.client is stores.redis and stores.pending.client is stores.redis
    log = build_stores(load_config(None, {"REDIS_URL": cluster_url, "REDIS_REPLICAS_ACK": "1"})).channel_log(
        lambda *a: None, lambda *a: None)
    assert log.replicas_ack == 1 and log.sharded


def test_shipped_config_is_the_embedded_default():
    config = load_config(None, {})
    assert config.redis.url == ""
    assert config.redis.replicas_ack == 0  # an ack means the master has it
    assert config.auth.required == () and config.auth.guests
    assert "*" not in config.server.cors_origins


def test_port_and_host_from_the_command_line():
    port = free_port()
    proc = ServerProcess(args=["--port", str(port)], port=port)
    proc.env["PORT"] = "1"  # the flag wins over the environment
    try:
        proc.start()
        assert proc.get("/healthz")[0] == 200
    finally:
        proc.kill()


async def test_json_logs_carry_no_tokens(servers, js, tmp_path):
    import json
    import time

    import jwt

    secret = "a-logging-test-secret-of-32-bytes-or-more"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[auth]\nkeys = [{{ kid = "k", algorithm = "HS256", key = "{secret}" }}]\n')
    srv = servers(env={"LOG_FORMAT": "json", "LOG_LEVEL": "debug", "ADMIN_PASSWORD": "pw-not-in-logs-123"},
                  args=["--config", str(cfg)])
    token = jwt.encode({"sub": "u1", "exp": time.time() + 60}, secret, headers={"kid": "k"})
    await js.connect("a", srv.url + "/chat", transports=["polling"], auth={"token": token})
    await js.connect("op", srv.url + "/admin", transports=["websocket"],
                     auth={"username": "admin", "password": "pw-not-in-logs-123"})
    await js.emit("a", "join", {"room": "r"})
    await js.emit("a", "message", {"room": "r", "text": "hello"})
    srv.stop()
    output = srv.output()
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= record.keys()
    assert token not in output and token.split(".")[2] not in output
    assert "pw-not-in-logs-123" not in output


def test_help_lists_every_environment_variable():
    from server.config import ENV_OVERRIDES

    out = run_server({}, "--help")
    assert out.returncode == 0
    for name, (section, key) in ENV_OVERRIDES.items():
        assert f"{name} " in out.stdout and f"{section}.{key}" in out.stdout, name


def test_startup_banner_says_where_everything_is(server):
    out = server.output()
    for path in ("/chat.html", "/game.html", "/collab.html", "/admin-ui/", "/metrics", "/api/v1/"):
        assert f"{server.url}{path}" in out, path
    assert "off: no keys" in out
