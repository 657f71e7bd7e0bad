"""/game: low latency, server-authoritative "pellet chase".

A lobby of game rooms (create, list, join, leave, capacity). The server owns each game's
state and advances it at a fixed tick rate; players send inputs (a direction), validated and
rate-limited; the state goes out as *volatile* events, so a slow client skips frames instead
of building a backlog. A player who drops keeps their slot for a grace period and can rejoin
mid-game. First to ``game.win_score`` pellets, or the best score when time runs out, wins.
Anyone may watch a game (``watch``) without playing. A finished game stays listed in the lobby
with its results until its node forgets it (``LOBBY_TTL``), and a player's "play again"
(``create {rematchOf}``) names the new game there, so the others can follow.
Nothing here is written to the event log.

With several nodes, a game lives on the node where it was created: the lobby is shared in
Redis (with each game's owner), players connected to other nodes have their commands
forwarded to the owner over the cluster bus, and the owner's state broadcasts reach every node.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any


from server.cluster import ClusterError
from server.game_lobby import LobbyFull
from server.namespace import BaseNamespace, ClientError, ok, require_dict

ARENA = 20
REJOIN_GRACE = 30.0
LOBBY = "lobby"
# Seconds a game stays listed unless its node refreshes it (every third of this).
LOBBY_TTL = 60.0

log = logging.getLogger("namespaces.game")
DIRECTIONS = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0), "none": (0, 0)}


@dataclass
class Player:
    user: str
    name: str
    x: int
    y: int
    score: int = 0
    direction: tuple[int, int] = (0, 0)
    sid: str | None = None
    left_at: float | None = None
    input_tokens: float = 10.0
    input_stamp: float = field(default_factory=time.monotonic)

    def public(self) -> dict[str, Any]:
        return {"user": self.user, "name": self.name, "x": self.x, "y": self.y, "score": self.score,
                "connected": self.sid is not None}


@dataclass
class Game:
    id: str
    name: str
    capacity: int
    host: str
    state: str = "waiting"  # waiting | playing | over
    players: dict[str, Player] = field(default_factory=dict)
    pellet: tuple[int, int] = (ARENA // 2, ARENA // 2)
    tick: int = 0
    ends_at: float = 0.0
    task: asyncio.Task | None = None
    spectators: set[str] = field(default_factory=set)  # sids watching (of any node)
    results: list[dict[str, Any]] | None = None  # once over: the players, best score first
    rematch: str | None = None  # once over: the game its players were asked to play next

    def remove_player(self, user: str) -> None:
        """A player leaves: gone while the game waits, kept (scored, disconnected) once it runs."""
        if self.state == "waiting":
            del self.players[user]
        else:
            player = self.players[user]
            player.sid, player.left_at = None, time.time()

    def summary(self) -> dict[str, Any]:
        summary = {"id": self.id, "name": self.name, "capacity": self.capacity, "state": self.state,
                   "players": len(self.players), "host": self.host, "spectators": len(self.spectators)}
        if self.state == "over":
            summary["results"] = self.results or []
            summary["rematch"] = self.rematch
        return summary

    def snapshot(self) -> dict[str, Any]:
        return {"game": self.id, "tick": self.tick, "state": self.state,
                "players": [p.public() for p in self.players.values()],
                "pellet": {"x": self.pellet[0], "y": self.pellet[1]},
                "remaining": max(0.0, round(self.ends_at - time.time(), 1)) if self.state == "playing" else None}


class GameNamespace(BaseNamespace):
    """The /game namespace. Game ``g`` is the Socket.IO room ``game:g``."""

    def __init__(self, namespace: str, runtime: Any) -> None:
        super().__init__(namespace, runtime)
        self.games: dict[str, Game] = {}
        self.rng = random.Random()
        self.lobby = runtime.stores.game_lobby
        runtime.cluster.handle("game", self._remote_command)

    async def start(self) -> None:
        self.runtime.background(self._keep_listed(), "game-lobby")

    async def _keep_listed(self) -> None:
        """Refresh this node's games in the lobby: a dead node's games leave it by themselves."""
        while True:
            await asyncio.sleep(LOBBY_TTL / 3)
            for game in list(self.games.values()):
                if game.state != "over":
                    try:
                        await self.lobby.put(game.id, self._listing(game), LOBBY_TTL)
                    except Exception as exc:  # LobbyFull cannot happen for a listed game
                        log.debug("lobby refresh of %s failed: %s", game.id, exc)

    async def stop(self) -> None:
        for game in self.games.values():
            if game.task is not None:
                game.task.cancel()

    def _game(self, payload: Any) -> Game:
        gid = require_dict(payload).get("game")
        game = self.games.get(gid) if isinstance(gid, str) else None
        if game is None:
            raise ClientError("no_such_game", "no such game")
        return game

    async def _lobby(self) -> list[dict[str, Any]]:
        # Finished games too, with their results: they lapse LOBBY_TTL after the end.
        return await self.lobby.games()

    def _listing(self, game: Game) -> dict[str, Any]:
        return {**game.summary(), "node": self.runtime.node_id}

    async def _lobby_changed(self, game: Game | None = None) -> None:
        if game is not None:
            try:
                await self.lobby.put(game.id, self._listing(game), LOBBY_TTL)
            except LobbyFull:
                raise ClientError("too_many_games", "the lobby is full") from None
        await self.emit("lobby", {"games": await self._lobby()}, room=LOBBY)

    async def _owner(self, payload: Any) -> str | None:
        """The node that runs the game (None: this one)."""
        gid = require_dict(payload).get("game")
        if not isinstance(gid, str) or gid in self.games:
            return None
        listed = await self.lobby.get(gid)
        if listed is None:
            raise ClientError("no_such_game", "no such game")
        node = listed.get("node")
        return node if isinstance(node, str) and node != self.runtime.node_id else None

    async def _forward(self, command: str, sid: str, payload: Any) -> dict[str, Any] | None:
        """Run ``command`` on the game's owner node when that is another node."""
        node = await self._owner(payload)
        if node is None:
            return None
        identity = self.identity(sid)
        try:
            answer = await self.runtime.cluster.call("game", {"cmd": command, "user": identity.user,
                                                              "name": identity.name, "sid": sid,
                                                              "payload": payload}, node=node, timeout=3)
        except ClusterError:
            raise ClientError("game_unavailable", "the node running this game does not answer") from None
        if isinstance(answer, Exception) or not isinstance(answer, dict):
            raise ClientError("game_unavailable", "the node running this game failed")
        return answer

    async def _remote_command(self, body: dict[str, Any]) -> dict[str, Any]:
        command, user, name, sid, payload = (body.get(k) for k in ("cmd", "user", "name", "sid", "payload"))
        if command not in ("join", "leave", "start", "input", "drop", "watch") or not all(
                isinstance(v, str) for v in (user, name, sid)):
            return ClientError("invalid_command", "bad game command").ack()
        try:
            game = self._game(payload)
            return await getattr(self, "_cmd_" + command)(game, user, name, sid, payload) or ok()
        except ClientError as exc:
            return exc.ack()

    # ------------------------------------------------------------------ lobby

    async def connected(self, sid: str, identity: Any, recovered: bool, auth: dict[str, Any]) -> None:
        await self.enter_room(sid, LOBBY)

    async def on_list(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return ok(games=await self._lobby(), maxPlayers=self.config.game.max_players)

    async def on_create(self, sid: str, payload: Any = None) -> dict[str, Any]:
        payload = require_dict(payload or {})
        name = payload.get("name", "game")
        capacity = payload.get("capacity", self.config.game.max_players)
        if not isinstance(name, str) or not 1 <= len(name) <= 40:
            raise ClientError("invalid_name", "name must be 1-40 characters")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or \
                not 2 <= capacity <= self.config.game.max_players:
            raise ClientError("invalid_capacity", f"capacity must be from 2 to {self.config.game.max_players}")
        if len(self.games) >= 1000:
            raise ClientError("too_many_games", "the lobby is full")
        rematch_of = payload.get("rematchOf")
        if rematch_of is not None and not isinstance(rematch_of, str):
            raise ClientError("invalid_payload", "rematchOf must be a game id")
        game = Game(id=secrets.token_hex(4), name=name, capacity=capacity, host=self.identity(sid).user)
        self.games[game.id] = game
        try:
            await self._lobby_changed(game)
        except ClientError:
            del self.games[game.id]
            raise
        # "Play again": the finished game names the new one (the first asked wins), so its other
        # players join it rather than each start their own. Only a game of this node.
        old = self.games.get(rematch_of) if rematch_of else None
        if old is not None and old.state == "over" and old.rematch is None:
            old.rematch = game.id
            await self._lobby_changed(old)
        return ok(game=game.summary())

    async def on_join(self, sid: str, payload: Any = None) -> dict[str, Any]:
        forwarded = await self._forward("join", sid, payload)
        if forwarded is not None:
            if forwarded.get("ok"):
                await self.enter_room(sid, "game:" + forwarded["game"]["id"])
            return forwarded
        identity = self.identity(sid)
        answer = await self._cmd_join(self._game(payload), identity.user, identity.name, sid, payload)
        await self.enter_room(sid, "game:" + answer["game"]["id"])
        return answer

    async def _cmd_join(self, game: Game, user: str, name: str, sid: str, payload: Any) -> dict[str, Any]:
        player = game.players.get(user)
        if player is None:
            if game.state != "waiting":
                raise ClientError("game_started", "this game has started; only its players may rejoin")
            if len(game.players) >= game.capacity:
                raise ClientError("game_full", "this game is full")
            x, y = self._free_cell(game)
            player = game.players[user] = Player(user, name, x, y)
        player.sid, player.left_at = sid, None
        game.spectators.discard(sid)
        await self._lobby_changed(game)
        await self.emit("state", game.snapshot(), room="game:" + game.id)
        return ok(game=game.summary(), state=game.snapshot())

    async def on_leave(self, sid: str, payload: Any = None) -> dict[str, Any]:
        gid = require_dict(payload).get("game")
        if isinstance(gid, str):
            await self.leave_room(sid, "game:" + gid)
        forwarded = await self._forward("leave", sid, payload)
        if forwarded is not None:
            return forwarded
        identity = self.identity(sid)
        return await self._cmd_leave(self._game(payload), identity.user, identity.name, sid, payload)

    async def on_watch(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``watch {game}`` → ``{game, state}``: its state events without playing (any state)."""
        forwarded = await self._forward("watch", sid, payload)
        if forwarded is None:
            identity = self.identity(sid)
            forwarded = await self._cmd_watch(self._game(payload), identity.user, identity.name, sid, payload)
        if forwarded.get("ok"):
            await self.enter_room(sid, "game:" + forwarded["game"]["id"])
        return forwarded

    async def _cmd_watch(self, game: Game, user: str, name: str, sid: str, payload: Any) -> dict[str, Any]:
        if user in game.players and game.players[user].sid == sid:
            raise ClientError("already_playing", "you play this game")
        game.spectators.add(sid)
        await self._lobby_changed(game)
        return ok(game=game.summary(), state=game.snapshot())

    async def _cmd_leave(self, game: Game, user: str, name: str, sid: str, payload: Any) -> dict[str, Any]:
        game.spectators.discard(sid)
        if user in game.players:
            game.remove_player(user)
        await self._lobby_changed(game)
        return ok()

    async def _cmd_drop(self, game: Game, user: str, name: str, sid: str, payload: Any) -> dict[str, Any]:
        """A player's connection ended on another node."""
        player = game.players.get(user)
        if player is not None and player.sid == sid:
            game.remove_player(user)
            await self._lobby_changed(game)
        elif sid in game.spectators:
            game.spectators.discard(sid)
            await self._lobby_changed(game)
        return ok()

    async def on_start(self, sid: str, payload: Any = None) -> dict[str, Any]:
        forwarded = await self._forward("start", sid, payload)
        if forwarded is not None:
            return forwarded
        identity = self.identity(sid)
        return await self._cmd_start(self._game(payload), identity.user, identity.name, sid, payload)

    async def _cmd_start(self, game: Game, user: str, name: str, sid: str, payload: Any) -> dict[str, Any]:
        if user != game.host:
            raise ClientError("not_host", "only the host can start the game")
        if game.state != "waiting":
            raise ClientError("already_started", "the game has already started")
        if len(game.players) < 2:
            raise ClientError("not_enough_players", "a game needs at least 2 players")
        game.state = "playing"
        game.ends_at = time.time() + self.config.game.duration
        game.pellet = self._free_cell(game)
        game.task = asyncio.create_task(self._run(game), name=f"game-{game.id}")
        await self._lobby_changed(game)
        return ok(state=game.snapshot())

    async def on_input(self, sid: str, payload: Any = None) -> dict[str, Any] | None:
        payload = require_dict(payload)
        forwarded = await self._forward("input", sid, payload)
        if forwarded is not None:
            return None if forwarded.get("ok") else forwarded
        identity = self.identity(sid)
        answer = await self._cmd_input(self._game(payload), identity.user, identity.name, sid, payload)
        return None if answer is None or answer.get("ok") else answer

    async def _cmd_input(self, game: Game, user: str, name: str, sid: str, payload: Any) -> dict[str, Any] | None:
        player = game.players.get(user)
        if player is None or player.sid != sid:
            raise ClientError("not_a_player", "you are not playing this game")
        direction = payload.get("dir")
        if direction not in DIRECTIONS:
            raise ClientError("invalid_input", f"dir must be one of {', '.join(DIRECTIONS)}")
        now = time.monotonic()
        rate = self.config.game.inputs_per_second
        player.input_tokens = min(rate, player.input_tokens + (now - player.input_stamp) * rate)
        player.input_stamp = now
        if player.input_tokens < 1:
            raise ClientError("rate_limited", "too many inputs")
        player.input_tokens -= 1
        player.direction = DIRECTIONS[direction]
        return ok()

    # ------------------------------------------------------------------ simulation

    def _free_cell(self, game: Game) -> tuple[int, int]:
        taken = {(p.x, p.y) for p in game.players.values()}
        while True:
            cell = (self.rng.randrange(ARENA), self.rng.randrange(ARENA))
            if cell not in taken:
                return cell

    def step(self, game: Game) -> None:
        """Advance one tick: move, collect, drop players gone longer than the grace period."""
        game.tick += 1
        now = time.time()
        for user, player in list(game.players.items()):
            if player.sid is None and player.left_at is not None and now - player.left_at > REJOIN_GRACE:
                del game.players[user]
                continue
            dx, dy = player.direction
            player.x = min(ARENA - 1, max(0, player.x + dx))
            player.y = min(ARENA - 1, max(0, player.y + dy))
            if (player.x, player.y) == game.pellet:
                player.score += 1
                game.pellet = self._free_cell(game)
        if any(p.score >= self.config.game.win_score for p in game.players.values()) or now >= game.ends_at or \
                len(game.players) < 2:
            game.state = "over"

    async def _run(self, game: Game) -> None:
        period = 1.0 / self.config.game.tick_rate
        next_at = time.monotonic()
        room = "game:" + game.id
        try:
            while game.state == "playing":
                self.step(game)
                await self.server.emit("state", game.snapshot(), room=room, namespace=self.namespace, volatile=True)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            results = sorted((p.public() for p in game.players.values()), key=lambda p: -p["score"])
            game.results = results
            await self.emit("game_over", {"game": game.id, "results": results,
                                          "winner": results[0]["user"] if results else None}, room=room)
        finally:
            await self._lobby_changed(game)
            asyncio.get_running_loop().call_later(60, self.games.pop, game.id, None)

    async def disconnected(self, sid: str, identity: Any, reason: str) -> None:
        for room in self.rooms_of(sid):
            if not room.startswith("game:"):
                continue
            payload = {"game": room[5:]}
            try:
                if await self._forward("drop", sid, payload) is None and room[5:] in self.games:
                    await self._cmd_drop(self.games[room[5:]], identity.user, identity.name, sid, payload)
            except ClientError:
                pass


def create(runtime: Any) -> GameNamespace:
    return GameNamespace("/game", runtime)
