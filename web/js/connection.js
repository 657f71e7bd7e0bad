// Shows a socket's connection state: connecting / connected / reconnecting / recovered,
// and the transport (WebSocket, or "polling fallback" when WebSocket is not available).
// ?transport=polling in a page's URL forces long-polling, as behind a proxy that blocks WebSocket.
export function socketOptions(extra = {}) {
  const params = new URLSearchParams(location.search);
  const options = { ...extra };
  if (params.get("transport") === "polling") options.transports = ["polling"];
  if (params.get("guest")) options.auth = { ...(options.auth || {}), guest: params.get("guest") };
  if (!options.auth) {
    // Keep the same guest identity across page loads of this tab.
    const saved = sessionStorage.getItem("guest");
    options.auth = saved ? { guest: saved } : {};
  }
  return options;
}

export function rememberGuest(user) {
  if (user && user.startsWith("guest-")) sessionStorage.setItem("guest", user);
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
