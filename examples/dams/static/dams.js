"use strict";
// New-dam notifications for a logged-in inventory page: one WebSocket, a dialog offering to
// reload. Pages of visitors who may not get notifications have no data-notifications attribute
// and open nothing. No build step, no dependencies.
(() => {
  const path = document.body.dataset.notifications;
  if (!path) return;
  const modal = document.getElementById("new-dam-modal");
  const live = document.getElementById("live");
  const names = [];
  let socket = null;
  let retry = 0;

  function setLive(state, text) {
    if (!live) return;
    live.className = "live " + state;
    live.textContent = text;
  }

  function announce(name) {
    if (!modal) return; // not the inventory page
    names.push(name);
    const more = names.length > 1 ? ` and ${names.length - 1} more` : "";
    document.getElementById("new-dam-names").textContent = `${names[names.length - 1]}${more}`;
    if (!modal.open) modal.showModal();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${path}`);
    socket.onopen = () => { retry = 0; setLive("on", "live"); };
    socket.onmessage = (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      if (m.type === "dam.notification") announce(m.name);
    };
    socket.onclose = () => {
      socket = null;
      setLive("off", "offline");
      // A refused socket (logged out elsewhere) also lands here: back off, up to a minute.
      setTimeout(connect, Math.min(60000, 1000 * 2 ** retry++));
    };
  }

  if (modal) {
    document.getElementById("modal-refresh").addEventListener("click", () => location.reload());
    document.getElementById("modal-dismiss").addEventListener("click", () => { names.length = 0; modal.close(); });
  }
  // Leaving the page closes the socket even if the browser keeps the page cached.
  window.addEventListener("pagehide", () => { if (socket) { socket.onclose = null; socket.close(1000); socket = null; } });
  window.addEventListener("pageshow", (e) => { if (e.persisted && !socket) connect(); });
  connect();
})();
