// room-web's page: a thin renderer of what the gateway's session shows (protocol: docs/web.md).
// Everything a peer wrote is set as textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const STORE = "room-web";
  const COLOURS = 10;
  const RETRY_FIRST = 250;
  const RETRY_MAX = 2000;
  const MAX_LINES = 5000; // the oldest lines go beyond this
  const ACCOUNT_TITLE = "logged in to a registered account";
  const ROOM_FLAGS = { // the mark of a room in the list, and what its title says
    private: {
      kind: "private", text: "private", title: "private: only users the admin allowed may enter",
    },
    requested: {
      kind: "requested", text: "requested", title: "you asked to join: the admin decides",
    },
  };

  let ws = null;
  let tab = loadTab(); // {token, name, secret}: this tab's session, kept across reloads
  let wanted = ""; // a name asked for, until the gateway welcomes it
  let signing = null; // {password, invite, register} typed with it: held only until then
  let shown = 0; // the number of the last line shown, within the gateway's tab
  let ended = false;
  let retry = RETRY_FIRST;
  let timer = null;
  let room = "";
  let limit = 0; // the broker's message limit in bytes (0: not known yet)
  let atEnd = true; // the message list shows its newest line: keep it so
  const newest = new Map(); // room -> newest seq shown: a new gateway continues from there
  const seen = new Set(); // "room seq" of every room message on the page: none twice

  function loadTab() {
    try {
      return JSON.parse(sessionStorage.getItem(STORE)) || null;
    } catch {
      return null;
    }
  }

  function saveTab() {
    if (tab) sessionStorage.setItem(STORE, JSON.stringify(tab));
    else sessionStorage.removeItem(STORE);
  }

  // ---- the WebSocket ------------------------------------------------------------------------

  function connect() {
    clearTimeout(timer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const sock = new WebSocket(`${scheme}//${location.host}/ws`);
    ws = sock;
    sock.onopen = () => {
      if (ws === sock) opened();
    };
    sock.onmessage = (event) => {
      if (ws === sock) receive(JSON.parse(event.data));
    };
    sock.onclose = (event) => {
      if (ws !== sock) return;
      ws = null;
      closed(event.code);
    };
  }

  function send(message) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  // hello, or register first; the password goes only with the name, never into storage.
  function signIn() {
    const typed = signing || {};
    const message = { t: typed.register ? "register" : "hello", name: wanted,
                      room: room || "public" };
    if (typed.password) message.password = typed.password;
    if (typed.register && typed.invite) message.invite = typed.invite;
    return send(message);
  }

  function signedIn() {
    signing = null;
    $("password").value = "";
    $("invite").value = "";
    $("register").checked = false;
    registering();
  }

  function opened() {
    if (wanted) {
      signIn();
    } else if (tab) {
      const seq = newest.get(room) || 0;
      send({ t: "resume", token: tab.token, after: shown, name: tab.name,
             secret: tab.secret, room: room || tab.room || "public", seq });
    }
  }

  function closed(code) {
    if (ended) return;
    if (code === 4003) {
      setStatus("disconnected", "continued in another tab");
      tab = null;
      return;
    }
    if (!tab && !wanted) {
      setStatus("disconnected", "not connected");
      return;
    }
    setStatus("reconnecting", "reconnecting");
    timer = setTimeout(connect, retry);
    retry = Math.min(retry * 2, RETRY_MAX);
  }

  function receive(m) {
    switch (m.t) {
      case "welcome":
        retry = RETRY_FIRST;
        if (!tab || tab.token !== m.token) shown = 0; // another gateway's numbering
        tab = { token: m.token, name: m.name, secret: m.secret, room: tab ? tab.room : "" };
        limit = m.max_message || 0;
        wanted = "";
        signedIn();
        ended = false;
        saveTab();
        showChat();
        break;
      case "line":
        if (m.n > shown) {
          shown = m.n;
          addLine(m);
        }
        break;
      case "state":
        showState(m);
        break;
      case "end":
        ended = true;
        tab = null;
        saveTab();
        addLine({ kind: "error", text: m.text });
        setStatus("disconnected", m.text);
        $("message").disabled = true;
        $("login").hidden = false;
        break;
      case "error":
        wanted = "";
        signing = null; // the fields keep what was typed, to be corrected
        if (tab) {
          tab = null; // the session could not be continued: ask for a name again
          saveTab();
        }
        $("login-error").textContent = m.text;
        $("login").hidden = false;
        $("chat").hidden = $("messages").childElementCount === 0;
        setStatus("disconnected", "not connected");
        $("name").focus();
        break;
    }
  }

  // ---- showing --------------------------------------------------------------------------------

  function setStatus(kind, text) {
    const status = $("status");
    status.className = kind;
    status.textContent = text;
  }

  function showChat() {
    $("login").hidden = true;
    $("login-error").textContent = "";
    $("chat").hidden = false;
    $("message").disabled = false;
    $("whoami").textContent = tab.name;
    $("message").focus();
  }

  function colour(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return `c${h % COLOURS}`;
  }

  function mentions(text, name) {
    const escaped = name.replace(/[-_]/g, "\\$&");
    return new RegExp(`(^|[^A-Za-z0-9_-])@?${escaped}($|[^A-Za-z0-9_-])`, "i").test(text);
  }

  function clock(ts) {
    const d = new Date(ts * 1000);
    return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  }

  function span(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  // A line of a room (its messages, and notices about it) has data-room, and shows only while
  // the page is in that room; errors and direct messages show in every room.
  function addLine(m) {
    const li = document.createElement("li");
    li.className = m.kind;
    if (m.room !== undefined) {
      li.dataset.room = m.room;
      if (m.room !== room && room) li.classList.add("elsewhere");
    }
    if (m.kind === "message" || m.kind === "history" || m.kind === "direct") {
      if (m.seq !== undefined) {
        const key = `${m.room} ${m.seq}`;
        if (seen.has(key)) return; // shown already (a replay, or history of what was live)
        seen.add(key);
        newest.set(m.room, Math.max(newest.get(m.room) || 0, m.seq));
        li.dataset.seq = String(m.seq);
      }
      li.dataset.sender = m.sender;
      if (m.own) li.classList.add("own");
      else if (tab && mentions(m.text, tab.name)) li.classList.add("mention");
      const time = document.createElement("time");
      time.dateTime = new Date(m.ts * 1000).toISOString();
      time.textContent = clock(m.ts);
      li.append(time, " ");
      // As the terminal writes it: [@carol] alice: text
      if (m.kind === "direct") li.append(span("to", `[@${m.to}]`), " ");
      li.append(span(`sender ${colour(m.sender)}`, m.sender), ": ", span("text", m.text));
    } else if (m.kind === "error") {
      const mark = span("mark", "!");
      mark.title = "error";
      li.append(mark, " ", span("text", m.text));
    } else {
      li.append(span("text", m.text));
    }
    place(li, m);
  }

  function place(li, m) {
    const list = $("messages");
    let before = null;
    if (m.kind === "history") {
      // Older messages of a room go before its newer ones already here.
      for (let el = list.lastElementChild; el; el = el.previousElementSibling) {
        if (el.dataset.room !== m.room || el.dataset.seq === undefined) continue;
        if (Number(el.dataset.seq) < m.seq) break;
        before = el;
      }
    }
    list.insertBefore(li, before);
    while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
    if (atEnd) toEnd();
  }

  function toEnd() {
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  function showState(m) {
    setStatus(m.status, m.status);
    $("whoami").textContent = m.name;
    if (m.room !== room) {
      room = m.room;
      if (tab) {
        tab.room = room; // where a gateway started again continues, after a reload too
        saveTab();
      }
      for (const el of $("messages").querySelectorAll("li[data-room]")) {
        el.classList.toggle("elsewhere", el.dataset.room !== room);
      }
      toEnd();
      atEnd = true;
    }
    const rooms = $("rooms");
    rooms.replaceChildren();
    const requested = new Set(m.requested || []);
    const locked = new Set(m.private || []);
    for (const [name, members] of m.rooms) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.append(span("room", name), " ");
      let flag = null;
      if (requested.has(name)) flag = ROOM_FLAGS.requested;
      else if (locked.has(name)) flag = ROOM_FLAGS.private;
      if (flag) {
        const mark = span(`flag ${flag.kind}`, flag.text);
        mark.title = flag.title;
        button.title = `${name}: ${flag.title}`;
        button.append(mark, " ");
      }
      button.append(span("count", String(members)));
      button.dataset.room = name;
      if (name === room) button.setAttribute("aria-current", "true");
      li.append(button);
      rooms.append(li);
    }
    $("members-title").textContent = `In ${room} (${m.members.length})`;
    const members = $("members");
    members.replaceChildren();
    const accounts = new Set(m.accounts || []);
    for (const name of m.members) {
      const li = document.createElement("li");
      li.append(span(`sender ${colour(name)}`, name));
      if (accounts.has(name)) {
        const mark = span("account", "\u2713");
        mark.title = ACCOUNT_TITLE;
        li.title = `${name}: ${ACCOUNT_TITLE}`;
        li.append(mark);
      }
      members.append(li);
    }
  }

  // ---- input ----------------------------------------------------------------------------------

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    wanted = $("name").value.trim();
    if (!wanted) return;
    signing = { password: $("password").value, invite: $("invite").value.trim(),
                register: $("register").checked };
    ended = false;
    tab = null;
    saveTab();
    $("login-error").textContent = "";
    setStatus("connecting", "connecting");
    if (!signIn()) connect();
  });

  // Registering needs a password, and on some brokers an invite code: its field shows then.
  function registering() {
    const on = $("register").checked;
    $("invite-field").hidden = !on;
    $("password").required = on;
    $("password").autocomplete = on ? "new-password" : "current-password";
    $("password").placeholder = on ? "a new password" : "if registered";
    $("join").textContent = on ? "Register and join" : "Join";
  }
  $("register").addEventListener("change", registering);
  registering(); // a browser may restore the box's state on a reload

  // What a typed line sends to a room or a user, as the session reads it (null: a command).
  function said(line) {
    if (line.startsWith("//")) return line.slice(1);
    const direct = /^\/msg\s+\S+\s+(.*)$/s.exec(line);
    if (direct) return direct[1];
    return line.startsWith("/") ? null : line;
  }

  $("say").addEventListener("submit", (event) => {
    event.preventDefault();
    const box = $("message");
    if (!box.value.trim()) return;
    const text = said(box.value);
    const size = text === null ? 0 : new TextEncoder().encode(text).length;
    if (limit && size > limit) {
      // The broker would refuse it (the terminal shows its words): kept here, to be shortened.
      const words = `not delivered: message is ${size} bytes; the limit is ${limit}`;
      addLine({ kind: "error", text: words });
      return;
    }
    if (send({ t: "input", text: box.value })) box.value = "";
  });

  $("messages").addEventListener("scroll", () => {
    const list = $("messages");
    atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  });
  // A narrower or shorter window (a phone turned, a keyboard shown) keeps the newest line in view.
  new ResizeObserver(() => {
    if (atEnd) toEnd();
  }).observe($("messages"));

  $("rooms").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-room]");
    if (button) send({ t: "input", text: `/join ${button.dataset.room}` });
  });

  $("new-room").addEventListener("submit", (event) => {
    event.preventDefault();
    const box = $("room-name");
    if (box.value.trim() && send({ t: "input", text: `/join ${box.value.trim()}` })) box.value = "";
  });

  if (tab) {
    $("login").hidden = true;
    $("chat").hidden = false;
    setStatus("connecting", "connecting");
    connect();
  } else {
    $("name").focus();
  }
})();
