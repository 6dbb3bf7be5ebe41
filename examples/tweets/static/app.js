// The tweets page: one WebSocket to /ws/map/ (switchboard.js: reconnects with back-off and
// jitter), a search at a time, posts shown as cards in a carousel, newest in front. No build
// step, no dependencies.
import { Switchboard } from "/switchboard.js";
const $ = (id) => document.getElementById(id);
const MAX_CARDS = 20;
let sb = null;
let listening = null;      // the term of the current search, or null
let cards = [];            // card elements, oldest first
let shown = -1;            // index in cards of the card in front
let received = 0;
window.tweets = { get client() { return sb; } }; // for the browser tests

function setConn(state, text) {
  $("conn").textContent = text;
  $("conn").className = "pill " + state;
  const open = state === "open";
  $("search").disabled = !open;
  $("stop").disabled = !open;
  for (const chip of document.querySelectorAll(".chip")) chip.disabled = !open;
}

function setState(text, error = false) {
  $("state").textContent = text;
  $("state").className = error ? "error" : "";
}

function connect() {
  sb = new Switchboard("/ws/map/", { minDelay: 1000, maxDelay: 30000 });
  setConn("", "connecting…");
  sb.on("open", () => {
    setConn("open", "live");
    if (listening) listen(listening); // resume after a reconnect
  });
  sb.on("close", (e) => setConn("closed", e.retryIn === null ? "disconnected" : "reconnecting…"));
  sb.on("tweet", addPost);
  sb.on("listening", (m) => setState(`Listening for ${m.message}`));
  sb.on("stopped", () => setState(listening === null ? "Stopped." : `Listening for ${listening}`));
  sb.on("status", (m) => setState(m.message));
  sb.on("error", (m) => setState(m.error, true));
}

function listen(term) {
  if (!sb || !sb.connected) return;
  listening = term;
  setState(`Searching for ${term}…`);
  sb.send({ type: "listen", message: term });
}

function stop() {
  listening = null;
  if (sb && sb.send({ type: "stop" })) {
    setState("Stopping…"); // "Stopped." when the server says so: no post comes after that
  } else {
    setState("Stopped.");
  }
}

function colorFor(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
  return `hsl(${h} 55% 48%)`;
}

function formatTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "";
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// The text with #hashtags highlighted, built from text nodes (never innerHTML).
function textWithTags(text) {
  const p = document.createElement("p");
  p.className = "text";
  const parts = text.split(/(#[\p{L}\p{N}_]+)/u);
  for (const part of parts) {
    if (part.startsWith("#") && part.length > 1) {
      const s = document.createElement("span");
      s.className = "tag";
      s.textContent = part;
      p.appendChild(s);
    } else if (part) {
      p.appendChild(document.createTextNode(part));
    }
  }
  return p;
}

// A post's link, if it is a web link (http or https, or a path on this site): posts come from
// the network, and a javascript: or data: URL must never become a link.
function webUrl(url) {
  if (typeof url !== "string" || url === "") return null;
  try {
    const u = new URL(url, location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

function addPost(m) {
  // Resuming a search after a reconnect re-sends its latest post. (The corpus source replays in
  // a loop, so a post may come again later: that is a new card.)
  if (cards.length && cards[cards.length - 1].dataset.id === m.id) return;
  const card = document.createElement("article");
  card.className = "card";
  card.dataset.id = m.id;
  const head = document.createElement("header");
  const avatar = document.createElement("span");
  avatar.className = "avatar";
  avatar.style.background = colorFor(m.author);
  avatar.textContent = (m.author.replace(/^@/, "")[0] || "?").toUpperCase();
  const who = document.createElement("div");
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = m.author;
  const time = document.createElement("time");
  time.dateTime = m.created_at;
  time.textContent = formatTime(m.created_at);
  who.append(author, time);
  head.append(avatar, who);
  const foot = document.createElement("footer");
  const href = webUrl(m.url);
  if (href) {
    const link = document.createElement("a");
    link.className = "link";
    link.href = href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.textContent = "Open post ↗";
    foot.appendChild(link);
  }
  card.append(head, textWithTags(m.text), foot);
  $("empty").hidden = true;
  $("carousel").appendChild(card);
  cards.push(card);
  if (cards.length > MAX_CARDS) cards.shift().remove();
  received += 1;
  $("count").textContent = `${received} post${received === 1 ? "" : "s"}`;
  $("count").dataset.count = String(received);
  show(cards.length - 1);
}

function show(i) {
  if (i < 0 || i >= cards.length) return;
  if (shown >= 0 && cards[shown]) cards[shown].classList.remove("current");
  shown = i;
  // Next frame, so a new card fades in rather than popping.
  requestAnimationFrame(() => cards[shown] && cards[shown].classList.add("current"));
  $("position").textContent = `${i + 1} / ${cards.length}`;
  $("prev").disabled = i === 0;
  $("next").disabled = i === cards.length - 1;
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const term = $("term").value.trim();
  if (term) listen(term);
});
$("stop").addEventListener("click", stop);
$("prev").addEventListener("click", () => show(shown - 1));
$("next").addEventListener("click", () => show(shown + 1));
for (const chip of document.querySelectorAll(".chip")) {
  chip.addEventListener("click", () => { $("term").value = chip.dataset.term; listen(chip.dataset.term); });
}

fetch("/config.json").then((r) => r.json()).then((c) => {
  const every = c.interval_ms >= 1000 ? `${c.interval_ms / 1000} s` : `${c.interval_ms} ms`;
  $("source").textContent = `Source: ${c.source} · at most one post every ${every}`;
}).catch(() => {});

// Leaving the page ends this page's search at once, even if the browser keeps the page in its
// back/forward cache; coming back reconnects (and resumes the search).
window.addEventListener("pagehide", () => {
  if (sb) { sb.close(1000, "page hidden"); sb = null; }
});
window.addEventListener("pageshow", (e) => { if (e.persisted && !sb) connect(); });

setConn("", "connecting…");
connect();
