// The demo page: login (phone + OTP), chats, real-time messages over protocol v1 (client.js).
//
// Text from users (messages, titles, phone numbers, server error messages) only ever reaches
// the DOM through `textContent`; this file never assigns `innerHTML`. The page's
// Content-Security-Policy (web/pages.py) forbids inline scripts and styles on top of that.
//
// Storage:
// - localStorage "messaging.device_id": generated once per browser profile, never changed.
// - localStorage "messaging.session": the access token and its user. localStorage, not
//   sessionStorage, because the server binds one session to one device id: the tabs of a
//   profile share the device id, so they share its session too (a second login from another tab
//   would otherwise end the first tab's session). Log out to remove it.
// - localStorage "messaging.contacts": user id -> phone, learned from lookups (the API has no
//   user -> phone route), to name 1:1 chats and senders.
// - localStorage "messaging.pending.<user>": sends without a send_ack yet (client.js).

import { ProtocolClient } from "./client.js";

const DEVICE_KEY = "messaging.device_id";
const SESSION_KEY = "messaging.session";
const CONTACTS_KEY = "messaging.contacts";
const PAGE_SIZE = 30;
const MAX_TEXT_BYTES = 4096;
const LOG_LINES = 60;

const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

// ------------------------------------------------------------------ identity and storage

function deviceId() {
  let id = localStorage.getItem(DEVICE_KEY);
  if (!id || !/^[A-Za-z0-9_-]{8,64}$/.test(id)) {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    id = "web-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

function loadJson(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key) ?? "null") ?? fallback;
  } catch {
    return fallback;
  }
}

const contacts = loadJson(CONTACTS_KEY, {});
function rememberContact(userId, phone) {
  contacts[userId] = phone;
  localStorage.setItem(CONTACTS_KEY, JSON.stringify(contacts));
}

const shortId = (id) => (id.length > 10 ? `${id.slice(0, 8)}…` : id);

// ------------------------------------------------------------------ REST

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (state.session) headers.authorization = `Bearer ${state.session.token}`;
  let answer;
  try {
    answer = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached.");
  }
  const data = answer.status === 204 ? {} : await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const error = data.error ?? {};
    if (answer.status === 401 && state.session && !path.startsWith("/v1/auth/")) {
      sessionEnded("Your session ended: log in again.");
    }
    throw new ApiError(answer.status, error.code ?? "http", error.message ?? answer.statusText);
  }
  return data;
}

// ------------------------------------------------------------------ state

const state = {
  session: null, // {token, user_id, device_id, phone, expires_at_ms}
  client: null,
  chats: new Map(), // chat_id -> chat record
  order: [], // chat ids, most recently active first
  openId: null,
  loginPhone: null,
  listFrame: 0,
  listLoaded: false,
};

function chatRecord(summary) {
  return {
    id: summary.chat_id,
    kind: summary.kind,
    title: summary.title,
    head: summary.visible_head ?? summary.head,
    lastAt: summary.last_message_at_ms || summary.created_at_ms || 0,
    unread: 0,
    messages: new Map(), // sequence -> message, what the page can show
    historyLoaded: false,
    hasMore: false,
    loadingOlder: false,
    other: null, // 1:1: the other member's user id
    gone: false,
  };
}

function chatName(chat) {
  if (chat.kind === "group") return chat.title || "Group";
  if (chat.other) return contacts[chat.other] ?? `1:1 with ${shortId(chat.other)}`;
  return "1:1 chat";
}

function senderName(userId) {
  if (state.session && userId === state.session.user_id) return "You";
  return contacts[userId] ?? shortId(userId);
}

// ------------------------------------------------------------------ login

// Which app process answers: behind HAProxy (`messaging stack up --apps N`) a reconnect after
// a drain or a crash lands on another one. /healthz names the process that answered it.
async function showServedBy() {
  try {
    const answer = await fetch("/healthz", { cache: "no-store" });
    const body = await answer.json();
    $("served-by").textContent = `served by ${body.instance}`;
  } catch {
    $("served-by").textContent = "served by: no answer";
  }
}

function showLogin(message = "") {
  $("app-view").hidden = true;
  $("conn").hidden = true;
  $("account").hidden = true;
  $("login-view").hidden = false;
  $("otp-form").hidden = false;
  $("verify-form").hidden = true;
  $("login-error").textContent = message;
  $("device-id").textContent = deviceId();
  $("phone").focus();
}

async function requestCode(event) {
  event.preventDefault();
  const phone = $("phone").value.trim();
  $("login-error").textContent = "";
  if (!phone) {
    $("login-error").textContent = "Enter your phone number.";
    $("phone").focus();
    return;
  }
  $("otp-send").disabled = true;
  try {
    const sent = await api("POST", "/v1/auth/otp", { phone });
    state.loginPhone = sent.phone;
    $("otp-form").hidden = true;
    $("verify-form").hidden = false;
    $("code").value = "";
    $("dev-note").hidden = true;
    try {
      const dev = await api("GET", `/v1/dev/otp?phone=${encodeURIComponent(sent.phone)}`);
      $("code").value = dev.code;
      $("dev-note").hidden = false;
      $("verify-send").focus();
    } catch {
      $("code").focus(); // no dev route: the code arrives by SMS
    }
  } catch (error) {
    $("login-error").textContent = error.message;
  } finally {
    $("otp-send").disabled = false;
  }
}

async function verifyCode(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  $("verify-send").disabled = true;
  try {
    const body = { phone: state.loginPhone, code: $("code").value.trim(), device_id: deviceId() };
    const session = await api("POST", "/v1/auth/verify", body);
    state.session = {
      token: session.access_token,
      user_id: session.user_id,
      device_id: session.device_id,
      phone: state.loginPhone,
      expires_at_ms: Date.now() + session.expires_in * 1000,
    };
    localStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    rememberContact(session.user_id, state.loginPhone);
    startApp(true);
  } catch (error) {
    $("login-error").textContent = error.message;
    $("code").focus();
  } finally {
    $("verify-send").disabled = false;
  }
}

function sessionEnded(message) {
  const client = state.client;
  state.client = null;
  client?.stop("session ended");
  state.session = null;
  localStorage.removeItem(SESSION_KEY);
  resetChats();
  showLogin(message);
}

async function logout() {
  try {
    await api("POST", "/v1/auth/logout");
  } catch {
    // the session is dropped here either way
  }
  sessionEnded("You are logged out.");
}

// ------------------------------------------------------------------ the app

function startApp(fromLogin = false) {
  const session = state.session;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("conn").hidden = false;
  $("account").hidden = false;
  $("me").textContent = session.phone;
  $("me").title = `${session.user_id} on device ${session.device_id}`;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const client = new ProtocolClient({
    url: `${scheme}//${location.host}/v1/ws`,
    token: session.token,
    deviceId: session.device_id,
    userId: session.user_id,
    loadChats,
  });
  state.client = client;
  client.addEventListener("state", (e) => showConnection(e.detail));
  client.addEventListener("ready", (e) => {
    $("reconnects").textContent = String(e.detail.reconnects);
    void showServedBy();
  });
  client.addEventListener("message", (e) => onMessage(e.detail.message, e.detail.replay));
  client.addEventListener("send", (e) => onSend(e.detail.send));
  client.addEventListener("acked", (e) => onAcked(e.detail.chatId, e.detail.lastAcked));
  client.addEventListener("synced", (e) => onSynced(e.detail.count));
  client.addEventListener("chatgone", (e) => onChatGone(e.detail.chatId));
  client.addEventListener("authfailed", (e) =>
    sessionEnded(`The server ended this session (close ${e.detail.code}): log in again.`),
  );
  client.addEventListener("frame", (e) => logFrame(e.detail.dir, e.detail.frame));
  client.addEventListener("rtt", (e) => {
    $("rtt").textContent = `${e.detail.ms} ms`;
  });
  loadChats()
    .then(() => {
      openFromHash(false);
      // The login form is gone: move focus to the first thing to do.
      if (fromLogin && !state.openId) {
        // After the list's own animation frame: its buttons exist by then.
        requestAnimationFrame(() => {
          ($("chat-list").querySelector("button") ?? $("direct-phone")).focus();
        });
      }
    })
    .catch(() => {});
  client.start();
}

function resetChats() {
  state.listLoaded = false;
  state.chats.clear();
  state.order = [];
  state.openId = null;
  $("chat-list").replaceChildren();
  $("messages").replaceChildren();
  $("proto-log").replaceChildren();
  $("reconnects").textContent = "0";
  $("rtt").textContent = "–";
  closeChatView();
}

/** GET /v1/chats: update the list; the client also uses it to learn chats after each ready. */
async function loadChats() {
  const { chats } = await api("GET", "/v1/chats");
  for (const summary of chats) {
    const existing = state.chats.get(summary.chat_id);
    if (existing) {
      existing.title = summary.title;
      existing.head = Math.max(existing.head, summary.visible_head ?? summary.head);
      existing.lastAt = Math.max(existing.lastAt, summary.last_message_at_ms || 0);
      existing.gone = false;
    } else {
      state.chats.set(summary.chat_id, chatRecord(summary));
    }
  }
  sortChats();
  renderChatList();
  if (!state.listLoaded) {
    state.listLoaded = true;
    $("new-direct-panel").open = state.chats.size === 0; // the first thing to do on a new account
  }
  for (const chat of state.chats.values()) {
    if (chat.kind === "direct" && !chat.other) void findOther(chat);
  }
  if (state.openId) renderChatHead();
  return chats;
}

async function findOther(chat) {
  chat.other = "";
  try {
    const { members } = await api("GET", `/v1/chats/${encodeURIComponent(chat.id)}/members`);
    chat.other = members.find((id) => id !== state.session?.user_id) ?? "";
  } catch {
    chat.other = null;
    return;
  }
  renderChatList();
  if (state.openId === chat.id) renderChatHead();
}

function sortChats() {
  state.order = [...state.chats.values()].sort((a, b) => b.lastAt - a.lastAt).map((c) => c.id);
}

function renderChatList() {
  if (state.listFrame) return;
  state.listFrame = requestAnimationFrame(() => {
    state.listFrame = 0;
    const list = $("chat-list");
    const focused = document.activeElement?.dataset?.chatId;
    const items = state.order.map((id) => {
      const chat = state.chats.get(id);
      const li = el("li");
      const button = el("button", "chat-item");
      button.type = "button";
      button.dataset.chatId = id;
      if (id === state.openId) button.setAttribute("aria-current", "true");
      const name = el("span", "chat-name", chatName(chat));
      name.dir = "auto";
      const sub = el(
        "span",
        "chat-sub",
        `${chat.kind === "group" ? "group" : "1:1"} · head #${chat.head}${chat.gone ? " · left" : ""}`,
      );
      button.append(name, sub);
      if (chat.unread > 0) {
        const badge = el("span", "badge", String(chat.unread));
        badge.append(el("span", "visually-hidden", " unread"));
        button.append(badge);
      }
      button.addEventListener("click", () => openChat(id, true));
      li.append(button);
      return li;
    });
    list.replaceChildren(...items);
    $("no-chats").hidden = items.length > 0;
    if (focused) list.querySelector(`[data-chat-id="${CSS.escape(focused)}"]`)?.focus();
  });
}

// ------------------------------------------------------------------ one chat

function openFromHash(focus) {
  const match = /^#chat=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (match && state.chats.has(match[1])) openChat(match[1], focus);
  else if (!match) closeChatView();
}

function openChat(id, focus) {
  const chat = state.chats.get(id);
  if (!chat) return;
  if (location.hash !== `#chat=${id}`) history.replaceState(null, "", `#chat=${id}`);
  state.openId = id;
  chat.unread = 0;
  document.body.classList.add("chat-open");
  renderChatList();
  renderChatHead();
  renderMessages(chat);
  $("chat-placeholder").hidden = true;
  $("composer-text").disabled = false;
  $("composer-send").disabled = false;
  $("composer-error").textContent = "";
  if (focus) $("composer-text").focus();
  if (!chat.historyLoaded) void loadNewest(chat);
}

function closeChatView() {
  state.openId = null;
  document.body.classList.remove("chat-open");
  $("chat-title").textContent = "No chat selected";
  $("chat-meta").textContent = "";
  $("messages").replaceChildren();
  $("chat-placeholder").hidden = false;
  $("load-older").hidden = true;
  $("history-status").textContent = "";
  $("composer-text").disabled = true;
  $("composer-send").disabled = true;
}

function renderChatHead() {
  const chat = state.chats.get(state.openId);
  if (!chat) return;
  const title = $("chat-title");
  title.textContent = chatName(chat);
  title.dir = "auto";
  const client = state.client;
  const parts = [
    chat.kind === "group" ? "group" : "1:1",
    `head #${chat.head}`,
    `delivered here #${client?.delivered(chat.id) ?? 0}`,
    `ack stored #${client?.acked(chat.id) ?? 0}`,
  ];
  const held = client?.held(chat.id) ?? 0;
  if (held) parts.push(`held ${held} (gap: syncing)`);
  if (chat.gone) parts.push("you are no longer a member");
  $("chat-meta").textContent = parts.join(" · ");
  $("chat-meta").title = chat.id;
}

function renderMessages(chat) {
  const list = $("messages");
  const seqs = [...chat.messages.keys()].sort((a, b) => a - b);
  const items = seqs.map((seq) => messageItem(chat.messages.get(seq)));
  const pending = (state.client?.sends() ?? []).filter(
    (send) => send.chat_id === chat.id && !chat.messages.has(send.sequence),
  );
  list.replaceChildren(...items, ...pending.map(sendItem));
  renderHistoryStatus(chat);
  scrollToBottom();
}

function renderHistoryStatus(chat) {
  $("load-older").hidden = !(chat.historyLoaded && chat.hasMore);
  let status = "";
  if (!chat.historyLoaded) status = "Loading history…";
  else if (chat.loadingOlder) status = "Loading older messages…";
  else if (!chat.hasMore) status = chat.messages.size ? "Beginning of the chat" : "No messages yet";
  $("history-status").textContent = status;
}

function stateText(message, mine) {
  if (mine) return ["acked", "✓ acked by server"];
  const acked = state.client?.acked(message.chat_id) ?? 0;
  return message.sequence <= acked ? ["delivered", "✓ received · ack stored"] : ["received", "received"];
}

function messageItem(message) {
  const mine = message.sender_id === state.session?.user_id;
  const li = el("li", mine ? "msg mine" : "msg");
  li.dataset.seq = String(message.sequence);
  li.dataset.cmid = message.client_message_id;
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-sender", senderName(message.sender_id)));
  const seq = el("span", "msg-seq", `#${message.sequence}`);
  seq.title = `sequence ${message.sequence}`;
  meta.append(seq);
  const time = el("time", "msg-time", formatTime(message.created_at_ms));
  time.dateTime = new Date(message.created_at_ms).toISOString();
  meta.append(time);
  const text = el("p", "msg-text", message.text);
  text.dir = "auto";
  const [key, label] = stateText(message, mine);
  li.dataset.state = key;
  const status = el("p", "msg-state", label);
  li.append(meta, text, status);
  return li;
}

function sendItem(send) {
  const li = el("li", "msg mine pending");
  li.dataset.cmid = send.client_message_id;
  const meta = el("div", "msg-meta");
  meta.append(el("span", "msg-sender", "You"));
  meta.append(el("span", "msg-seq", send.sequence ? `#${send.sequence}` : "#…"));
  const text = el("p", "msg-text", send.text);
  text.dir = "auto";
  li.append(meta, text, el("p", "msg-state"));
  updateSendItem(li, send);
  return li;
}

function updateSendItem(li, send) {
  li.dataset.state = send.state;
  const labels = {
    sending: "sending…",
    acked: `✓ acked by server (#${send.sequence})`,
    failed: `✕ not sent: ${send.error}`,
  };
  li.querySelector(".msg-seq").textContent = send.sequence ? `#${send.sequence}` : "#…";
  li.querySelector(".msg-state").textContent = labels[send.state] ?? send.state;
}

function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** Insert in sequence order: sequenced items ascending, then pending sends (no data-seq). */
function placeMessage(li, seq) {
  const list = $("messages");
  let before = null;
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    if (node.dataset.seq === undefined || Number(node.dataset.seq) > seq) before = node;
    else break;
  }
  list.insertBefore(li, before);
}

function nearBottom() {
  const box = $("messages-scroll");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToBottom() {
  const box = $("messages-scroll");
  box.scrollTop = box.scrollHeight;
}

/** Add a message to what the page shows; false if it was shown already. */
function showMessage(chat, message) {
  if (chat.messages.has(message.sequence)) return false;
  chat.messages.set(message.sequence, message);
  if (state.openId === chat.id) {
    const stick = nearBottom();
    const pendingItem = $("messages").querySelector(
      `li.pending[data-cmid="${CSS.escape(message.client_message_id)}"]`,
    );
    if (pendingItem && message.sender_device === state.session?.device_id) pendingItem.remove();
    placeMessage(messageItem(message), message.sequence);
    if (stick) scrollToBottom();
  }
  return true;
}

function onMessage(message, replay) {
  const chat = state.chats.get(message.chat_id);
  if (!chat) return;
  const added = showMessage(chat, message);
  chat.head = Math.max(chat.head, message.sequence);
  chat.lastAt = Math.max(chat.lastAt, message.created_at_ms);
  const mine = message.sender_id === state.session?.user_id;
  if (added && !mine && state.openId !== chat.id) chat.unread += 1;
  if (added && !mine && !replay) {
    $("announcer").textContent = `New message from ${senderName(message.sender_id)} in ${chatName(chat)}: ${message.text}`;
  }
  sortChats();
  renderChatList();
  if (state.openId === chat.id) {
    renderChatHead();
    renderHistoryStatus(chat);
  }
}

function onSend(send) {
  if (state.openId !== send.chat_id) return;
  const list = $("messages");
  let li = list.querySelector(`li.pending[data-cmid="${CSS.escape(send.client_message_id)}"]`);
  const chat = state.chats.get(send.chat_id);
  if (!li) {
    if (send.state !== "sending" || chat?.messages.has(send.sequence)) return;
    li = sendItem(send);
    list.append(li);
    scrollToBottom();
    return;
  }
  updateSendItem(li, send);
}

function onAcked(chatId, lastAcked) {
  if (state.openId !== chatId) return;
  for (const li of $("messages").querySelectorAll('li[data-state="received"]')) {
    if (Number(li.dataset.seq) <= lastAcked) {
      li.dataset.state = "delivered";
      li.querySelector(".msg-state").textContent = "✓ received · ack stored";
    }
  }
  renderChatHead();
}

function onSynced(count) {
  const reconnect = state.client && state.client.readies > 1;
  if (count > 0) toast(`Synced ${count} message${count === 1 ? "" : "s"}`);
  else if (reconnect) toast("Synced: nothing missed");
  if (state.openId) renderChatHead();
}

function onChatGone(chatId) {
  const chat = state.chats.get(chatId);
  if (!chat) return;
  chat.gone = true;
  renderChatList();
  if (state.openId === chatId) renderChatHead();
}

// ------------------------------------------------------------------ history (REST)

async function loadNewest(chat) {
  renderHistoryStatus(chat);
  try {
    const page = await api("GET", `/v1/chats/${encodeURIComponent(chat.id)}/messages?limit=${PAGE_SIZE}`);
    chat.historyLoaded = true;
    chat.hasMore = page.has_more;
    acceptHistory(chat, page.messages);
  } catch (error) {
    $("history-status").textContent = `History not loaded: ${error.message}`;
    return;
  }
  if (state.openId === chat.id) {
    renderHistoryStatus(chat);
    scrollToBottom();
    fillViewport(chat);
  }
}

function acceptHistory(chat, messages) {
  const client = state.client;
  for (const message of messages) {
    // At or below what was delivered: history to show. Above it: the client's ordering rules,
    // as for a message from the socket (it may be held until a sync fills a gap).
    const offered = client && message.sequence > client.delivered(chat.id) && client.offer(message);
    if (!offered) showMessage(chat, message);
  }
}

async function loadOlder(chat) {
  if (chat.loadingOlder || !chat.hasMore || !chat.messages.size) return;
  const before = Math.min(...chat.messages.keys());
  chat.loadingOlder = true;
  renderHistoryStatus(chat);
  const box = $("messages-scroll");
  try {
    const page = await api(
      "GET",
      `/v1/chats/${encodeURIComponent(chat.id)}/messages?before=${before}&limit=${PAGE_SIZE}`,
    );
    const fromBottom = box.scrollHeight - box.scrollTop;
    chat.hasMore = page.has_more;
    acceptHistory(chat, page.messages);
    if (state.openId === chat.id) box.scrollTop = box.scrollHeight - fromBottom;
  } catch (error) {
    $("history-status").textContent = `Older messages not loaded: ${error.message}`;
  } finally {
    chat.loadingOlder = false;
  }
  if (state.openId === chat.id) {
    renderHistoryStatus(chat);
    fillViewport(chat);
  }
}

/** Short pages do not scroll: keep loading until the list fills the view (or nothing is left). */
function fillViewport(chat) {
  const box = $("messages-scroll");
  if (chat.hasMore && box.scrollHeight <= box.clientHeight) void loadOlder(chat);
}

// ------------------------------------------------------------------ composer

function submitMessage(event) {
  event.preventDefault();
  const box = $("composer-text");
  const text = box.value;
  const error = $("composer-error");
  error.textContent = "";
  if (!state.openId || !state.client) return;
  if (!text.trim()) return;
  const bytes = new TextEncoder().encode(text).length;
  if (bytes > MAX_TEXT_BYTES) {
    error.textContent = `Too long: ${bytes} bytes of UTF-8, at most ${MAX_TEXT_BYTES}.`;
    return;
  }
  if (state.chats.get(state.openId)?.gone) {
    error.textContent = "You are no longer a member of this chat.";
    return;
  }
  state.client.send(state.openId, text);
  box.value = "";
  box.focus();
}

function composerKeys(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

// ------------------------------------------------------------------ new chats

function parsePhones(text) {
  return text
    .split(/[\s,;]+/)
    .map((p) => p.trim())
    .filter(Boolean);
}

async function lookup(phone) {
  try {
    const user = await api("GET", `/v1/users/by-phone?phone=${encodeURIComponent(phone)}`);
    rememberContact(user.user_id, user.phone);
    return user.user_id;
  } catch (error) {
    if (error.status === 404) {
      throw new ApiError(404, "not_found", `No user has the number ${phone} (they log in once first).`);
    }
    throw error;
  }
}

async function afterCreate(chatId) {
  if (state.client?.live) await state.client.refreshChats();
  else await loadChats();
  openChat(chatId, true);
}

async function startDirect(event) {
  event.preventDefault();
  const error = $("sidebar-error");
  error.textContent = "";
  const phone = $("direct-phone").value.trim();
  if (!phone) {
    error.textContent = "Enter their phone number.";
    $("direct-phone").focus();
    return;
  }
  try {
    const userId = await lookup(phone);
    const { chat } = await api("POST", "/v1/chats/direct", { user_id: userId });
    $("direct-phone").value = "";
    await afterCreate(chat.chat_id);
  } catch (failure) {
    error.textContent = failure.message;
  }
}

async function createGroup(event) {
  event.preventDefault();
  const error = $("sidebar-error");
  error.textContent = "";
  const title = $("group-title").value.trim();
  const phones = parsePhones($("group-phones").value);
  if (!title) {
    error.textContent = "Give the group a title.";
    $("group-title").focus();
    return;
  }
  try {
    const memberIds = [];
    for (const phone of phones) memberIds.push(await lookup(phone));
    const { chat } = await api("POST", "/v1/chats/groups", { title, member_ids: memberIds });
    $("group-title").value = "";
    $("group-phones").value = "";
    await afterCreate(chat.chat_id);
  } catch (failure) {
    error.textContent = failure.message;
  }
}

// ------------------------------------------------------------------ connection state

const STATE_LABELS = {
  connecting: "connecting",
  syncing: "syncing",
  live: "live",
  disconnected: "disconnected",
};

function showConnection(detail) {
  const box = $("conn-state");
  box.dataset.state = detail.state;
  document.body.dataset.conn = detail.state;
  $("conn-label").textContent = STATE_LABELS[detail.state] ?? detail.state;
  let extra = "";
  if (detail.state === "disconnected") {
    if (detail.offline) extra = "(offline: press Go online)";
    else if (detail.retryInMs !== undefined) {
      extra = `(close ${detail.code}; retrying in ${(detail.retryInMs / 1000).toFixed(1)} s)`;
    }
  } else if (detail.state === "syncing") {
    extra = "(catching up)";
  }
  $("conn-detail").textContent = extra;
  const offline = Boolean(state.client && !state.client.wanted);
  const toggle = $("offline-toggle");
  toggle.setAttribute("aria-pressed", String(offline));
  toggle.textContent = offline ? "Go online" : "Go offline";
}

function toggleOffline() {
  const client = state.client;
  if (!client) return;
  if (client.wanted) client.stop("offline toggle");
  else client.start();
}

let toastTimer = 0;
function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    box.hidden = true;
  }, 8000);
}

function logFrame(dir, frame) {
  const parts = [dir === "in" ? "←" : "→", frame.type];
  if (frame.chat_id) parts.push(shortId(frame.chat_id));
  if (frame.sequence !== undefined) parts.push(`#${frame.sequence}`);
  if (frame.replay) parts.push("replay");
  if (frame.type === "sync_request") parts.push(`${frame.chats?.length ?? "all"} chat(s)`);
  if (frame.type === "sync_complete") parts.push(`head #${frame.head}`);
  if (frame.type === "acked") parts.push(`#${frame.last_acked_sequence}`);
  if (frame.type === "error") parts.push(frame.code);
  if (frame.duplicate) parts.push("duplicate");
  const list = $("proto-log");
  list.append(el("li", `log-${dir}`, parts.join(" ")));
  while (list.childElementCount > LOG_LINES) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight; // the newest frame stays in view
}

// ------------------------------------------------------------------ start

function init() {
  $("otp-form").addEventListener("submit", requestCode);
  $("verify-form").addEventListener("submit", verifyCode);
  $("otp-back").addEventListener("click", () => showLogin());
  $("logout").addEventListener("click", logout);
  $("offline-toggle").addEventListener("click", toggleOffline);
  $("refresh-chats").addEventListener("click", () => {
    if (state.client?.live) void state.client.refreshChats();
    else void loadChats().catch(() => {});
  });
  $("direct-form").addEventListener("submit", startDirect);
  $("group-form").addEventListener("submit", createGroup);
  $("composer").addEventListener("submit", submitMessage);
  $("composer-text").addEventListener("keydown", composerKeys);
  $("load-older").addEventListener("click", () => {
    const chat = state.chats.get(state.openId);
    if (chat) void loadOlder(chat);
  });
  $("messages-scroll").addEventListener("scroll", () => {
    const chat = state.chats.get(state.openId);
    if (chat && $("messages-scroll").scrollTop < 60) void loadOlder(chat);
  });
  $("back").addEventListener("click", () => {
    history.replaceState(null, "", location.pathname);
    closeChatView();
    renderChatList();
    $("chat-list").querySelector("button")?.focus();
  });
  window.addEventListener("hashchange", () => openFromHash(false));
  window.addEventListener("online", () => state.client?.reconnectNow());
  window.addEventListener("pagehide", () => state.client?.flushAcks());

  const saved = loadJson(SESSION_KEY, null);
  if (saved && saved.token && saved.device_id === deviceId() && saved.expires_at_ms > Date.now()) {
    state.session = saved;
    api("GET", "/v1/auth/session")
      .then(() => startApp())
      .catch((error) => {
        if (error.status === 401) sessionEnded("Your session ended: log in again.");
        else startApp(); // the server is unreachable: the client keeps retrying
      });
  } else {
    localStorage.removeItem(SESSION_KEY);
    showLogin();
  }
  void showServedBy();
}

init();
