// New-dam notifications for a logged-in inventory page: one WebSocket (switchboard.js:
// reconnects with back-off and jitter), a dialog offering to reload. Pages of visitors who may
// not get notifications have no data-notifications attribute and open nothing. No build step,
// no dependencies.
import { Switchboard } from "/switchboard.js";

const path = document.body.dataset.notifications;
const modal = document.getElementById("new-dam-modal");
const live = document.getElementById("live");
const names = [];
let sb = null;
window.dams = { get client() { return sb; } }; // for the browser tests

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
  // A refused socket (logged out elsewhere) closes too: back off, up to a minute.
  sb = new Switchboard(path, { minDelay: 1000, maxDelay: 60000 });
  sb.on("open", () => setLive("on", "live"));
  sb.on("close", () => setLive("off", "offline"));
  sb.on("dam.notification", (m) => announce(m.name));
}

if (path) {
  if (modal) {
    document.getElementById("modal-refresh").addEventListener("click", () => location.reload());
    document.getElementById("modal-dismiss").addEventListener("click", () => { names.length = 0; modal.close(); });
  }
  // Leaving the page closes the socket even if the browser keeps the page cached.
  window.addEventListener("pagehide", () => { if (sb) { sb.close(1000); sb = null; } });
  window.addEventListener("pageshow", (e) => { if (e.persisted && !sb) connect(); });
  connect();
}
