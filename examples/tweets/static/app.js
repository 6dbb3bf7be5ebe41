"use strict";
// The tweets page: one WebSocket to /ws/map/, a search at a time, posts shown as cards in a
// carousel, newest in front. No build step, no dependencies.
const $ = (id) => document.getElementById(id);
const MAX_CARDS = 20;
let socket = null;
let listening = null;      // the term of the current search, or null
let cards = [];            // card elements, oldest first
let shown = -1;            // index in cards of the card in front
let received = 0;
let retry = 0;

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
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/map/`);
  setConn("", "connecting…");
  socket.onopen = () => {
    retry = 0;
    setConn("open", "live");
    if (listening) listen(listening); // resume after a reconnect
  };
  socket.onclose = () => {
    setConn("closed", "disconnected");
    socket = null;
    const wait = Math.min(30000, 1000 * 2 ** retry++);
    setTimeout(connect, wait);
  };
  socket.onmessage = (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    if (m.type === "tweet") addPost(m);
    else if (m.type === "listening") setState(`Listening for ${m.message}`);
    else if (m.type === "stopped") setState(listening === null ? "Stopped." : `Listening for ${listening}`);
    else if (m.type === "status") setState(m.message);
    else if (m.type === "error") setState(m.error, true);
  };
}

function listen(term) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  listening = term;
  setState(`Searching for ${term}…`);
  socket.send(JSON.stringify({ type: "listen", message: term }));
}

function stop() {
  listening = null;
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "stop" }));
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
  if (socket) { socket.onclose = null; socket.close(1000, "page hidden"); socket = null; }
});
window.addEventListener("pageshow", (e) => { if (e.persisted && !socket) connect(); });

setConn("", "connecting…");
connect();
