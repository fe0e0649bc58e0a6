// zchat in the browser: the page's side of the gateway's WebSocket (docs/WEB.md).
// Every text from the chat goes into the page with textContent, never as HTML.

const $ = (id) => document.getElementById(id);
const LOBBY = "*";

const state = {
  ws: null,
  open: false,
  me: "",
  session: sessionStorage.getItem("zchat-session") || "",
  lastEid: 0, // the last event shown: a resume asks for what came after it
  cid: 0,
  outbox: [], // commands not known to have reached the gateway: sent again after a resume
  broker: "connecting", // the library's state at the gateway: online, reconnecting, ...
  quitting: false,
  startingOver: 0, // after a reset: sign-in attempts so far
  retry: 0,
  convs: new Map(), // key ("*", "#room", "@name") -> conversation
  current: LOBBY,
  online: new Set(),
};

// --- the WebSocket ----------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws`);
  state.ws = ws;
  ws.addEventListener("open", () => {
    state.open = true;
    state.retry = 0;
    if (state.session) {
      ws.send(JSON.stringify({ type: "resume", session: state.session, last: state.lastEid }));
    } else if (state.me) {
      hello(state.me);
    }
    banner();
  });
  ws.addEventListener("message", (e) => receive(JSON.parse(e.data)));
  ws.addEventListener("close", () => {
    if (state.ws !== ws) return;
    state.open = false;
    state.ws = null;
    banner();
    if (state.quitting || (!state.session && !state.me)) return;
    const wait = Math.min(500 * 2 ** state.retry++, 5000);
    setTimeout(connect, wait);
  });
}

function hello(name) {
  const invite = JSON.parse(localStorage.getItem("zchat-invite") || "null");
  const fields = { type: "hello", name };
  if (invite && invite.name.toLowerCase() === name.toLowerCase()) fields.invite = invite.token;
  state.ws.send(JSON.stringify(fields));
}

function command(type, fields = {}) {
  const data = { type, cid: ++state.cid, ...fields };
  state.outbox.push(data);
  if (state.outbox.length > 500) state.outbox.shift(); // long since taken, surely
  if (state.open && state.session) state.ws.send(JSON.stringify(data));
}

// --- what the gateway says ----------------------------------------------------------

function receive(e) {
  if ("eid" in e) {
    if (e.eid <= state.lastEid) return; // never twice
    state.lastEid = e.eid;
    event(e);
    return;
  }
  switch (e.type) {
    case "welcome": {
      started(e);
      // A new session (after a gateway restart, too): what was typed and not yet sent goes out in it.
      const typed = state.outbox.filter((c) => c.type === "line" || c.type === "send");
      state.outbox = [];
      state.cid = 0;
      command("who");
      state.quietRooms = true;
      command("rooms");
      for (const { type, cid, ...fields } of typed) command(type, fields);
      break;
    }
    case "resumed":
      started(e);
      state.cid = Math.max(state.cid, e.last_cid);
      state.outbox = state.outbox.filter((c) => c.cid > e.last_cid);
      for (const c of state.outbox) state.ws.send(JSON.stringify(c));
      break;
    case "reset":
      startOver(e.text);
      break;
    case "refused":
      if (state.startingOver && e.code === 623 && state.startingOver++ < 10) {
        // The old session may hold the name until the broker's heartbeat timeout ends it.
        setTimeout(() => state.open && !state.session && hello(state.me), 2000);
        break;
      }
      state.startingOver = 0;
      state.me = "";
      showSignIn(e.text);
      break;
    case "bye":
      state.quitting = true;
      state.session = "";
      sessionStorage.removeItem("zchat-session");
      showSignIn("Signed out.");
      break;
    case "error":
      notice(state.current, `${e.text} (${e.code})`, "error");
      break;
  }
}

function started(e) {
  state.startingOver = 0;
  state.me = e.name;
  state.session = e.session;
  state.broker = e.state;
  sessionStorage.setItem("zchat-session", e.session);
  sessionStorage.setItem("zchat-name", e.name);
  $("sign-in").hidden = true;
  $("chat").hidden = false;
  document.body.dataset.me = e.name;
  banner();
  if (document.activeElement === $("name") || document.activeElement === document.body) $("message").focus();
}

function startOver(why) {
  // The gateway no longer has this session (it restarted, or we were away too long):
  // forget everything shown and sign in again under the same name.
  state.session = "";
  sessionStorage.removeItem("zchat-session");
  state.lastEid = 0;
  state.convs.clear();
  state.online.clear();
  $("logs").replaceChildren();
  state.current = LOBBY;
  conv(LOBBY);
  show(LOBBY);
  notice(LOBBY, `Started over: ${why}.`, "notice");
  state.startingOver = 1;
  if (state.me) hello(state.me);
  else showSignIn("");
}

function event(e) {
  switch (e.type) {
    case "message":
      message(e);
      break;
    case "ack":
      ack(e);
      break;
    case "receipt": {
      const entry = document.querySelector(`li[data-id="${CSS.escape(e.id)}"]`);
      if (entry && !entry.querySelector(".tick")) {
        const tick = span("tick", "✓");
        tick.title = `delivered to ${e.to}`;
        tick.setAttribute("aria-label", `delivered to ${e.to}`);
        entry.append(tick);
      }
      break;
    }
    case "presence":
      presence(e);
      break;
    case "users":
      if (e.room) {
        notice(e.room, `in ${e.room}: ${e.names.join(", ") || "nobody"}`, "notice");
      } else {
        state.online = new Set(e.names);
        drawOnline();
      }
      break;
    case "rooms":
      for (const room of e.mine) conv(room);
      drawConvs();
      if (state.quietRooms) {
        state.quietRooms = false; // the sign-in's own question: only to list our rooms
        break;
      }
      notice(
        state.current,
        e.rooms.length ? `rooms: ${e.rooms.map((r) => `${r.room} (${r.members})`).join(", ")}` : "no rooms yet",
        "notice",
      );
      break;
    case "history": {
      const c = conv(e.room);
      pageCame(c);
      if (e.count === 0) {
        c.complete = true;
        notice(e.room, "no earlier messages", "notice", true);
      }
      if (e.room === state.current) $("earlier").disabled = c.complete;
      break;
    }
    case "found":
      found(e.messages);
      break;
    case "status":
      state.broker = e.state;
      banner();
      if (e.state !== "online") notice(LOBBY, e.text, "notice");
      break;
    case "help":
      notice(state.current, e.text, "notice");
      break;
    case "away": // the broker's word before the ACK of a private message to an away user
      conv(`@${e.name.toLowerCase()}`, e.name); // named as the ACK that follows would name it
      drawConvs();
      notice(`@${e.name.toLowerCase()}`, `${e.name} is away: ${e.text}`, "notice");
      break;
    case "topic": {
      const by = e.by ? ` (set by ${e.by})` : "";
      let text = e.text ? `topic of ${e.room}: ${e.text}${by}` : `${e.room} has no topic`;
      if (e.changed) text = e.text ? `${e.by} set the topic of ${e.room}: ${e.text}` : `${e.by} cleared the topic of ${e.room}`;
      notice(e.room, text, "notice");
      break;
    }
    case "room":
      if (e.room.startsWith("#") || e.room === LOBBY) conv(e.room);
      show(e.room.startsWith("#") || e.room === LOBBY ? e.room : `@${e.room.toLowerCase()}`);
      break;
    case "error":
      notice(state.current, `${e.to && e.to !== LOBBY ? `not sent to ${e.to}` : "not sent"}: ${e.text} (${e.code})`, "error");
      break;
  }
}

function keyOf(m) {
  if (m.kind !== "private") return m.room;
  const other = m.from.toLowerCase() === state.me.toLowerCase() ? m.to : m.from;
  return `@${other.toLowerCase()}`;
}

function message(m) {
  const key = keyOf(m);
  const c = conv(key, m.kind === "private" ? (m.from.toLowerCase() === state.me.toLowerCase() ? m.to : m.from) : key);
  if (m.history && c.asking) {
    c.held.push(m); // of the earlier page asked for: it goes in whole, with its answer
    return;
  }
  put(c, m);
}

function put(c, m) {
  if (c.ids.has(m.id)) return;
  c.ids.add(m.id);
  const mine = m.from.toLowerCase() === state.me.toLowerCase();
  add(c, entry(m, mine), m.time, m.seq || 0);
  if (!m.history && !mine) {
    const mention = new RegExp(`(^|\\W)@?${state.me.replace(/[.]/g, "\\.")}(\\W|$)`, "i").test(m.text);
    unread(c, m.kind === "private" || mention, m);
  }
}

function ack(a) {
  if (a.command === "enter") {
    conv(a.to);
    drawConvs();
    notice(a.to, `you joined ${a.to}`, "notice");
  } else if (a.command === "exit") {
    const c = state.convs.get(a.to);
    if (c) {
      c.log.remove();
      state.convs.delete(a.to);
      if (state.current === a.to) show(LOBBY);
      drawConvs();
    }
    notice(LOBBY, `you left ${a.to}`, "notice");
  } else if ((a.command || "send") === "send" && a.to !== LOBBY && !a.to.startsWith("#")) {
    const c = conv(`@${a.to.toLowerCase()}`, a.to);
    if (c.ids.has(a.id)) return;
    c.ids.add(a.id);
    const li = entry({ id: a.id, from: state.me, to: a.to, text: a.text || "", time: a.time, kind: "private" }, true);
    if (a.status === "stored") li.append(span("notice", ` (stored: ${a.to} is offline)`));
    add(c, li, a.time);
  }
}

function presence(p) {
  if (p.room === LOBBY) {
    if (p.event === "join") state.online.add(p.name);
    else state.online.delete(p.name);
    drawOnline();
    if (p.name.toLowerCase() !== state.me.toLowerCase()) {
      notice(LOBBY, `${p.name} ${p.event === "join" ? "joined" : `left (${p.reason})`}`, "notice");
    }
  } else if (state.convs.has(p.room) && p.name.toLowerCase() !== state.me.toLowerCase()) {
    notice(p.room, `${p.name} ${p.event === "join" ? "joined" : "left"} ${p.room}`, "notice");
  }
}

// --- conversations ------------------------------------------------------------------

function conv(key, title) {
  let c = state.convs.get(key);
  if (c) return c;
  const log = document.createElement("ol");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", `Messages in ${key === LOBBY ? "the lobby" : title || key}`);
  log.tabIndex = 0;
  log.hidden = key !== state.current;
  log.addEventListener("scroll", () => {
    if (log.scrollTop === 0 && key === state.current) earlier();
  });
  $("logs").append(log);
  c = {
    key,
    title: key === LOBBY ? "Lobby" : title || key,
    log,
    ids: new Set(),
    unread: 0,
    complete: false,
    asking: null, // the timer of an earlier page asked for, until its answer
    held: [], // that page's messages so far
  };
  state.convs.set(key, c);
  drawConvs();
  return c;
}

function show(key) {
  const c = conv(key);
  state.current = key;
  for (const other of state.convs.values()) other.log.hidden = other !== c;
  c.unread = 0;
  $("where").textContent = key.startsWith("@") ? `Private with ${c.title}` : c.title;
  $("leave").hidden = !key.startsWith("#");
  $("earlier").hidden = key.startsWith("@");
  $("earlier").disabled = c.complete;
  $("message").setAttribute("aria-label", "Message");
  c.log.scrollTop = c.log.scrollHeight;
  drawConvs();
  title();
}

function add(c, li, time, seq = 0) {
  li.dataset.time = time || "";
  li.dataset.seq = String(seq);
  // In time order (and the room's order within a millisecond): history pages arrive
  // after what is shown, and go before it.
  const later = (node) => {
    if (node.dataset.time !== li.dataset.time) return node.dataset.time > li.dataset.time;
    return Number(node.dataset.seq) > seq && seq > 0;
  };
  let before = null;
  for (let node = c.log.lastElementChild; node; node = node.previousElementSibling) {
    if (!node.dataset.time || !later(node)) break;
    before = node;
  }
  const atEnd = c.log.scrollTop + c.log.clientHeight >= c.log.scrollHeight - 4;
  c.log.insertBefore(li, before);
  if (before === null && atEnd) c.log.scrollTop = c.log.scrollHeight;
}

function notice(key, text, kind, first = false) {
  const c = conv(key);
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  if (first) {
    c.log.prepend(li);
  } else {
    li.dataset.time = "";
    c.log.append(li);
    c.log.scrollTop = c.log.scrollHeight;
  }
}

function entry(m, mine) {
  const li = document.createElement("li");
  li.dataset.id = m.id;
  if (m.history) li.classList.add("history");
  const when = new Date(m.time);
  const time = document.createElement("time");
  time.className = "time";
  time.dateTime = m.time;
  time.textContent = m.history ? when.toLocaleString() : when.toLocaleTimeString();
  li.append(time);
  if (m.kind === "private" && mine) {
    li.append(span("from", `you → ${m.to}`));
  } else if (m.action) {
    li.append(span("from", `* ${m.from}`));
  } else {
    li.append(span("from", m.from));
  }
  li.append(span("text", m.text));
  return li;
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function unread(c, loud, m) {
  const seen = c.key === state.current && !document.hidden;
  if (!seen) {
    c.unread++;
    drawConvs();
    title();
  }
  if (loud && document.hidden && "Notification" in window && Notification.permission === "granted") {
    new Notification(m.kind === "private" ? `${m.from} (private)` : `${m.from} in ${m.room === LOBBY ? "the lobby" : m.room}`, {
      body: m.text.slice(0, 200),
      tag: c.key,
    });
  }
}

function title() {
  let total = 0;
  for (const c of state.convs.values()) total += c.unread;
  document.title = total ? `(${total}) zchat` : "zchat";
}

function drawConvs() {
  const rooms = [], privates = [];
  for (const c of state.convs.values()) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.append(span("label", c.title));
    if (c.unread) button.append(span("unread", String(c.unread)));
    button.setAttribute("aria-label", c.unread ? `${c.title}, ${c.unread} unread` : c.title);
    if (c.key === state.current) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => {
      show(c.key);
      $("message").focus();
    });
    li.append(button);
    (c.key.startsWith("@") ? privates : rooms).push(li);
  }
  $("rooms").replaceChildren(...rooms);
  $("privates").replaceChildren(...privates);
}

function drawOnline() {
  const names = [...state.online].sort((a, b) => a.localeCompare(b));
  $("online-title").textContent = `Online (${names.length})`;
  $("online").replaceChildren(
    ...names.map((name) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = name;
      button.setAttribute("aria-label", `Talk privately with ${name}`);
      button.addEventListener("click", () => {
        conv(`@${name.toLowerCase()}`, name);
        show(`@${name.toLowerCase()}`);
        $("message").focus();
      });
      li.append(button);
      return li;
    }),
  );
}

function found(messages) {
  const list = messages.map((m) => {
    const li = entry(m, m.from.toLowerCase() === state.me.toLowerCase());
    li.prepend(span("notice", m.kind === "private" ? "[private] " : `${m.room === LOBBY ? "lobby" : m.room} `));
    return li;
  });
  if (!list.length) list.push(Object.assign(document.createElement("li"), { textContent: "found nothing" }));
  $("found").replaceChildren(...list);
  $("results").hidden = false;
}

function earlier() {
  const c = state.convs.get(state.current);
  if (!c || c.complete || c.key.startsWith("@") || c.asking) return;
  c.asking = setTimeout(() => pageCame(c), 5000); // in case the answer never comes
  command("history", { room: c.key, before: -1, count: 50 });
}

// The earlier page's messages come one event each, then its answer: they are shown together,
// in one go, so the reader never sees (or scrolls from) half a page.
function pageCame(c) {
  clearTimeout(c.asking);
  c.asking = null;
  const held = c.held;
  c.held = [];
  for (const m of held) put(c, m);
}

// --- the banner: shown exactly while what is typed cannot go out ------------------

function banner() {
  const b = $("banner");
  let text = "";
  if ($("chat").hidden) text = state.open || !state.me ? "" : "Connecting…";
  else if (!state.open) text = "Reconnecting to the gateway… what you type is sent once it is back.";
  else if (state.broker !== "online") text = "Reconnecting to the chat server… what you type is sent once it is back.";
  b.textContent = text;
  b.hidden = !text;
}

function showSignIn(text) {
  $("chat").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = text;
  banner();
  $("name").focus();
}

// --- the user's side ------------------------------------------------------------------

function where() {
  return state.current.startsWith("@") ? state.convs.get(state.current).title : state.current;
}

$("sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  state.me = name;
  state.quitting = false;
  $("sign-in-error").textContent = "";
  if (state.open) hello(name);
  else if (!state.ws) connect();
  banner();
});

$("compose").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("message").value;
  if (!text.trim()) return;
  $("message").value = "";
  if (/^\/(quit|exit|q)\s*$/i.test(text)) {
    signOut();
    return;
  }
  command("line", { text, where: where() });
});

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  let room = $("join-room").value.trim().toLowerCase();
  if (!room) return;
  if (!room.startsWith("#")) room = `#${room}`;
  $("join-room").value = "";
  command("line", { text: `/join ${room}`, where: where() });
});

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const words = $("search-words").value.trim();
  if (words) command("search", { words });
});

$("close-results").addEventListener("click", () => {
  $("results").hidden = true;
});
$("earlier").addEventListener("click", earlier);
$("leave").addEventListener("click", () => command("line", { text: `/leave ${state.current}`, where: where() }));
$("sign-out").addEventListener("click", signOut);
$("notify").addEventListener("click", async () => {
  if ("Notification" in window) $("notify").hidden = (await Notification.requestPermission()) === "granted";
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.convs.has(state.current)) show(state.current);
});

function signOut() {
  state.quitting = true;
  if (state.open) state.ws.send(JSON.stringify({ type: "quit" }));
  else showSignIn("Signed out.");
}

// An invitation link (zchat web invite NAME): its token stays in this browser, out of the address bar.
const invite = /^#invite=([A-Za-z0-9_.-]{1,32}):([A-Za-z0-9_-]+)$/.exec(location.hash);
if (invite) {
  localStorage.setItem("zchat-invite", JSON.stringify({ name: invite[1], token: invite[2] }));
  history.replaceState(null, "", location.pathname);
}
const known = JSON.parse(localStorage.getItem("zchat-invite") || "null");
$("name").value = sessionStorage.getItem("zchat-name") || (known ? known.name : "");
conv(LOBBY);
show(LOBBY);
if (state.session) {
  state.me = sessionStorage.getItem("zchat-name") || ""; // a reload: resume, or sign in again as before
  connect();
}
