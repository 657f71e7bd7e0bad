// ?transport=polling in a page's URL forces long-polling, as behind a proxy that blocks WebSocket.
export function socketOptions(extra = {}) {
  const params = new URLSearchParams(location.search);
  const options = { ...extra };
  if (params.get("transport") === "polling") options.transports = ["polling"];
  if (!options.auth) {
    // A guest keeps its id across reconnects and page loads of this tab only with the guest
    // token the server issued (a guest id is public, it proves nothing); read at every connect.
    // The display name the user picked (kept in this browser, all tabs) goes with it.
    options.auth = (send) => {
      const saved = sessionStorage.getItem("guestToken"), name = savedName();
      send({ ...(saved ? { guestToken: saved } : {}), ...(name ? { name } : {}) });
    };
  }
  return options;
}

// Keep the guest token of a `whoami` answer (guests only) for the next connections.
export function rememberGuest(me) {
  if (me && me.guest && typeof me.guestToken === "string") sessionStorage.setItem("guestToken", me.guestToken);
}

// The badge: connecting / connected / recovered; while the connection is down "offline —
// retrying in N s" (counting down to socket.io-client's next attempt), "reconnecting…" during
// an attempt; "refused: …" when the server refused the connection (no retry), "disconnected
// by the server". The transport label shows only while connected: "WebSocket", "polling"
// (before an upgrade), "polling fallback" (WebSocket failed), "polling (forced)" (?transport=polling).
export function trackConnection(socket, badge, transportLabel) {
  const forced = new URLSearchParams(location.search).get("transport") === "polling";
  let retryAt = 0, ticker = null, upgradeFailed = false;
  const set = (state, text) => {
    clearInterval(ticker);
    badge.dataset.state = state;
    badge.textContent = text || state;
  };
  const showTransport = () => {
    const name = socket.io.engine && socket.io.engine.transport ? socket.io.engine.transport.name : "";
    transportLabel.dataset.transport = name;
    transportLabel.textContent = name === "websocket" ? "WebSocket" : name === "webtransport" ? "WebTransport"
      : forced ? "polling (forced)" : upgradeFailed ? "polling fallback" : "polling";
  };
  const hideTransport = () => { transportLabel.textContent = ""; delete transportLabel.dataset.transport; };
  const offline = () => {
    hideTransport();
    const tick = () => {
      const left = Math.ceil((retryAt - Date.now()) / 1000);
      badge.textContent = left > 0 ? `offline — retrying in ${left} s` : "offline — retrying now";
    };
    set("offline");
    tick();
    ticker = setInterval(tick, 250);
  };
  // socket.io-client picks each retry's delay (exponential backoff with jitter) without
  // announcing it: its backoff's duration() is wrapped to learn when the next attempt is.
  const backoff = socket.io.backoff;
  if (backoff && typeof backoff.duration === "function") {
    const duration = backoff.duration.bind(backoff);
    backoff.duration = () => {
      const ms = duration();
      retryAt = Date.now() + ms;
      if (!socket.connected && socket.active) offline();
      return ms;
    };
  }
  set("connecting");
  // The engine starts its WebSocket probe as soon as it opens, before the namespace is
  // connected: listen from the engine's open, or a quickly refused probe goes unnoticed.
  socket.io.on("open", () => {
    upgradeFailed = false;
    const engine = socket.io.engine;
    engine.on("upgrade", () => { if (socket.connected) showTransport(); });
    engine.on("upgradeError", () => { upgradeFailed = true; if (socket.connected) showTransport(); });
  });
  socket.on("connect", () => {
    set(socket.recovered ? "recovered" : "connected");
    showTransport();
  });
  socket.on("disconnect", (reason) => {
    if (socket.active) return offline();  // it reconnects by itself
    hideTransport();
    set("disconnected", reason === "io server disconnect" ? "disconnected by the server" : "disconnected");
  });
  socket.on("connect_error", (err) => {
    if (socket.active) return offline();  // the server was not reached: it retries
    hideTransport();
    set("error", `refused: ${err.message}`);  // the server said no: socket.io-client gives up
  });
  socket.io.on("reconnect_attempt", () => set("reconnecting", "reconnecting…"));
}

// Where a page is (its chat room, its document) lives in the URL, so a reload or a shared link
// opens the same place; the other parameters (?transport=polling) stay as they are.
export function pageParam(name, fallback) {
  return new URLSearchParams(location.search).get(name) || fallback;
}

export function setPageParam(name, value) {
  const url = new URL(location.href);
  if (url.searchParams.get(name) === value) return;
  url.searchParams.set(name, value);
  history.replaceState(history.state, "", url);
}

// ---------------------------------------------------------------------- display names

const NAME_KEY = "displayName";
export const MAX_NAME = 32;

export function savedName() {
  return localStorage.getItem(NAME_KEY) || "";
}

// What is wrong with a display name (the server's rule: server/auth.py display_name), or "".
export function nameProblem(name) {
  if (!name) return "";
  if (name.length > MAX_NAME) return `at most ${MAX_NAME} characters`;
  if (/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}]/u.test(name)) return "no control or invisible characters";
  if (name.toLowerCase().startsWith("guest-")) return "must not start with guest- (it would pass for a guest id)";
  return "";
}

// "Alice (you)" for the user of this page, "Bob" for anyone else.
export function labelFor(user, name, me) {
  return user === me ? `${name} (you)` : name;
}

// The name form in the page's header (#name, #name-error) and the notice under it (#notice):
// picking a name stores it and connects again with it; a name the server refuses is shown with
// its reason (the connection stays down until another one is picked); a guest token the
// server did not honour is explained. Call showMe with each `whoami` answer.
export function nameControl(socket) {
  const header = document.querySelector("header");
  const form = document.createElement("form");
  form.id = "name-form";
  form.className = "name-form";
  form.innerHTML = `<input id="name" placeholder="your name" aria-label="your display name" autocomplete="nickname">` +
    `<button id="set-name">Set name</button><span class="name-error" id="name-error" role="alert"></span>`;
  header.insertBefore(form, header.querySelector(".transport"));
  const notice = Object.assign(document.createElement("div"), { id: "notice", className: "notice", hidden: true });
  notice.setAttribute("role", "status");
  document.querySelector("main").prepend(notice);
  const input = form.querySelector("#name"), error = form.querySelector("#name-error");
  input.value = savedName();
  form.onsubmit = (e) => {
    e.preventDefault();
    const name = input.value.normalize("NFC").trim();
    const problem = nameProblem(name);
    if (problem) { error.textContent = `name: ${problem}`; return; }
    error.textContent = "";
    if (name) localStorage.setItem(NAME_KEY, name); else localStorage.removeItem(NAME_KEY);
    input.value = name;
    // A new connection (not a recovery: the session keeps the name it connected with).
    socket.disconnect();
    socket.connect();
  };
  socket.on("connect_error", (err) => {
    if (err.data && err.data.code === "invalid_name") {
      error.textContent = `name refused: ${err.message}`;
      input.focus();
    }
  });
  return {
    showMe(me) {
      if (!me || !me.ok) return;
      error.textContent = "";
      notice.hidden = !me.notice;
      notice.textContent = me.notice ? `Your saved guest identity was not used: ${me.notice}.` : "";
      if (!input.value && me.name !== me.user) input.value = me.name;
    },
  };
}
