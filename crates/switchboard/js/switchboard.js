// switchboard.js: a WebSocket client for switchboard consumers. A plain ES module, no build
// step, no dependency: `import { Switchboard } from "/switchboard.js"`.
//
// - Handlers by message type: `sb.on("chat.message", (m) => …)`; `"*"` gets every frame.
// - Reconnects after a connection it did not close itself ends, with exponential back-off and
//   full jitter (a random delay between half and all of min(maxDelay, minDelay · 2^attempt)),
//   so a restarted server is not met by every client at once.
// - Resumes: a frame with `"position":"EPOCH:OFFSET"` (a message of a group that keeps history)
//   is remembered; connecting, the client adds `since=POSITION` to the URL (empty before it
//   has one: from now), and a consumer
//   that joins with `group_add_since` sends what was missed first. A frame at or before the
//   last position of its epoch is a copy and is dropped, so a handler sees each message once.
// - The consumer's welcome frame (`welcome`, e.g. "chat.joined") says whether what was missed
//   could be recovered (`recovered`) and, as `top`, the group's position at the join: a client
//   that has seen nothing yet resumes from there.
// - Presence: `sb.present` maps each client id in the group's presence to its entry
//   (`{client_id, user, since_ms, meta}`), seeded from the welcome frame's `present` list (or
//   `sb.setPresent(list)`) and kept by the `presence.join` / `presence.leave` events; a
//   `"presence"` event follows each change. A `presence.sync` (events were throttled) is
//   passed on for the app to ask for the list again.
//
// The semantics (positions, epochs, resume) are in switchboard's layer documentation.

export class Switchboard {
  /**
   * @param {string} url ws:// or wss:// URL (or a path on this page's host).
   * @param {object} [options]
   * @param {Object<string,string>} [options.params] query parameters to add to the URL.
   * @param {string} [options.sinceParam="since"] the query parameter that carries the position.
   * @param {string} [options.welcome] the type of the consumer's welcome frame.
   * @param {number} [options.minDelay=500] first back-off, in ms.
   * @param {number} [options.maxDelay=15000] longest back-off, in ms.
   * @param {string} [options.position] a position to resume from on the first connect.
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { sinceParam: "since", minDelay: 500, maxDelay: 15000, ...options };
    this.position = options.position ?? null;
    this.handlers = new Map();
    this.attempt = 0;
    this.socket = null;
    this.closed = false;
    this.timer = null;
    this.present = new Map();
    this.connect();
  }

  /** Replaces the presence with `list` (entries with a `client_id`); emits `"presence"`. */
  setPresent(list) {
    this.present = new Map((Array.isArray(list) ? list : []).map((e) => [e.client_id, e]));
    this.emit("presence", { type: "presence", present: this.present });
  }

  /** Calls `handler(message)` for every frame of `type` (`"*"`: every frame). */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
    return this;
  }

  /** Whether the socket is open now. */
  get connected() {
    return !!this.socket && this.socket.readyState === WebSocket.OPEN;
  }

  /** Sends `message` as JSON; false if not connected (nothing is queued). */
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /** Closes for good: no reconnect. */
  close(code = 1000, reason = "") {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(code, reason);
  }

  /** The URL of the next connect: the parameters, and `since`. */
  target() {
    const u = new URL(this.url, location.href);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    for (const [k, v] of Object.entries(this.options.params ?? {})) u.searchParams.set(k, v);
    // Empty the first time: "from now, and tell me where that is" (the welcome's `top`).
    u.searchParams.set(this.options.sinceParam, this.position ?? "");
    return u.toString();
  }

  connect() {
    const socket = new WebSocket(this.target());
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.emit("open", { type: "open", resuming: this.position });
    };
    socket.onmessage = (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch { return this.emit("unreadable", { type: "unreadable", data: e.data }); }
      if (m === null || typeof m !== "object") return this.emit("unreadable", { type: "unreadable", data: e.data });
      if (this.options.welcome && m.type === this.options.welcome) {
        if (!this.position || m.recovered === false) this.position = typeof m.top === "string" ? m.top : null;
        if (Array.isArray(m.present)) this.setPresent(m.present);
      } else if (m.type === "presence.join" && typeof m.client_id === "string") {
        this.present.set(m.client_id, m);
        this.emit("presence", { type: "presence", present: this.present });
      } else if (m.type === "presence.leave" && typeof m.client_id === "string") {
        this.present.delete(m.client_id);
        this.emit("presence", { type: "presence", present: this.present });
      } else if (typeof m.position === "string") {
        if (this.seen(m.position)) return;
        this.position = m.position;
      }
      this.emit(m.type, m);
    };
    socket.onclose = (e) => {
      if (this.socket !== socket) return;
      this.socket = null;
      // Not again after a close that says this client is at fault (unsupported or invalid
      // data, a policy violation, too big) or that the app refused it (4000–4999).
      const refused = [1003, 1007, 1008, 1009].includes(e.code) || (e.code >= 4000 && e.code <= 4999);
      const again = !this.closed && !refused;
      let delay = null;
      if (again) {
        const cap = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this.attempt);
        delay = Math.round(cap / 2 + Math.random() * cap / 2);
        this.attempt += 1;
        this.timer = setTimeout(() => this.connect(), delay);
      }
      this.emit("close", { type: "close", code: e.code, reason: e.reason, retryIn: delay });
    };
  }

  /** Whether a message at `position` is at or before the last one seen (of the same epoch). */
  seen(position) {
    if (!this.position) return false;
    const [e1, o1] = split(this.position), [e2, o2] = split(position);
    return e1 !== null && e1 === e2 && o2 <= o1;
  }

  emit(type, m) {
    for (const h of this.handlers.get(type) ?? []) h(m);
    if (type !== "open" && type !== "close" && type !== "presence") for (const h of this.handlers.get("*") ?? []) h(m);
  }
}

function split(position) {
  const i = position.lastIndexOf(":");
  if (i <= 0) return [null, 0];
  const offset = Number(position.slice(i + 1));
  return Number.isSafeInteger(offset) ? [position.slice(0, i), offset] : [null, 0];
}
