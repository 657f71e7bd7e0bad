// Shows a socket's connection state: connecting / connected / reconnecting / recovered,
// and the transport (WebSocket, or "polling fallback" when WebSocket is not available).
// ?transport=polling in a page's URL forces long-polling, as behind a proxy that blocks WebSocket.
export function socketOptions(extra = {}) {
  const params = new URLSearchParams(location.search);
  const options = { ...extra };
  if (params.get("transport") === "polling") options.transports = ["polling"];
  if (!options.auth) {
    // A guest keeps its id across reconnects and page loads of this tab only with the guest
    // token the server issued (a guest id is public, it proves nothing); read at every connect.
    options.auth = (send) => {
      const saved = sessionStorage.getItem("guestToken");
      send(saved ? { guestToken: saved } : {});
    };
  }
  return options;
}

// Keep the guest token of a `whoami` answer (guests only) for the next connections.
export function rememberGuest(me) {
  if (me && me.guest && typeof me.guestToken === "string") sessionStorage.setItem("guestToken", me.guestToken);
}

export function trackConnection(socket, badge, transportLabel) {
  const set = (state, text) => { badge.dataset.state = state; badge.textContent = text || state; };
  const showTransport = () => {
    const name = socket.io.engine && socket.io.engine.transport ? socket.io.engine.transport.name : "?";
    transportLabel.textContent = name === "websocket" ? "WebSocket" : "polling fallback";
    transportLabel.dataset.transport = name;
  };
  set("connecting");
  socket.on("connect", () => {
    set(socket.recovered ? "recovered" : "connected");
    showTransport();
    socket.io.engine.on("upgrade", showTransport);
  });
  socket.on("disconnect", () => set("reconnecting"));
  socket.on("connect_error", (err) => set("error", `error: ${err.message}`));
  socket.io.on("reconnect_attempt", () => set("reconnecting"));
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
