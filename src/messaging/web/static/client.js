// Protocol v1 over WebSocket for the browser (docs/protocol.md, "Client rules").
//
// - Per chat, messages are delivered to the page in sequence order, exactly once: a sequence
//   already delivered (or held) is dropped; one above `delivered + 1` is held, and a
//   `sync_request` from `delivered` fills the gap. Every sync this client sends carries a
//   position, so a `sync_complete {head}` proves that whatever is still missing up to `head` is
//   invisible to this user (before joining, after removal): the buffer skips to `head`.
// - Delivered messages are acked in batches: one `ack` per chat with its highest delivered
//   sequence. Acks not confirmed by `acked` are sent again after a reconnect.
// - Reconnects with exponential backoff and jitter; after every `ready` the chat list is read
//   again (REST, to learn chats created meanwhile) and every chat is synced from what was
//   delivered.
// - Sends are kept until their `send_ack` (or a non-retriable error) and written again with the
//   same `client_message_id` after each reconnect, after a retriable error and when no answer
//   came in time; they are kept in localStorage so a reload resends them too, for 24 hours.
// - A `ping` every 20 s (the server's idle timeout is 60 s); no frame at all for 50 s means the
//   connection is dead: close it and reconnect.

export const PROTOCOL = "messaging.v1";
const PING_MS = 20_000;
const DEAD_MS = 50_000;
const ACK_BATCH_MS = 300;
const GAP_DELAY_MS = 250;
const SEND_TIMEOUT_MS = 10_000;
const SEND_MAX_AGE_MS = 24 * 3600 * 1000;
const BACKOFF_INITIAL_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const SYNC_CHATS_PER_FRAME = 150; // keeps a sync_request well under max_frame_bytes (16 KiB)
const RETRIABLE = new Set(["rate_limited", "unavailable", "store_unavailable", "internal_error"]);
const AUTH_CLOSES = new Set([4001, 4003]);

/** One chat's reorder and dedupe buffer (pure). */
export class ChatBuffer {
  constructor(delivered) {
    this.delivered = delivered;
    this.held = new Map(); // sequence -> message
    this.duplicates = 0;
  }

  get hasGap() {
    return this.held.size > 0;
  }

  /** Take one message; return the messages now deliverable, in order (maybe none). */
  receive(message) {
    const seq = message.sequence;
    if (seq <= this.delivered || this.held.has(seq)) {
      this.duplicates += 1;
      return [];
    }
    this.held.set(seq, message);
    return this.#releaseContiguous();
  }

  /** Everything visible up to `head` was sent: stop waiting for the missing ones. */
  skipTo(head) {
    if (head <= this.delivered) return [];
    const released = [...this.held.keys()]
      .filter((seq) => seq <= head)
      .sort((a, b) => a - b)
      .map((seq) => {
        const message = this.held.get(seq);
        this.held.delete(seq);
        return message;
      });
    this.delivered = head;
    return released.concat(this.#releaseContiguous());
  }

  #releaseContiguous() {
    const released = [];
    while (this.held.has(this.delivered + 1)) {
      this.delivered += 1;
      released.push(this.held.get(this.delivered));
      this.held.delete(this.delivered);
    }
    return released;
  }
}

function backoff(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2)); // "equal jitter"
}

/**
 * Events (CustomEvent `detail`):
 *   state      {state: connecting|syncing|live|disconnected, code?, reason?, retryInMs?, offline?}
 *   ready      {reconnects}
 *   message    {message, replay}             released in sequence order, once each
 *   synced     {count, chats}                the sync after a `ready` finished
 *   acked      {chatId, lastAcked}
 *   send       {send}                        a send changed (state: sending|acked|failed)
 *   chatgone   {chatId, code}                not (or no longer) a member
 *   authfailed {code, reason}                4001/4003: log in again
 *   frame      {dir: in|out, frame}          for the protocol log
 *   rtt        {ms}
 */
export class ProtocolClient extends EventTarget {
  constructor({ url, token, deviceId, userId, loadChats }) {
    super();
    this.url = url;
    this.token = token;
    this.deviceId = deviceId;
    this.userId = userId;
    this.loadChats = loadChats; // async () => chat summaries (GET /v1/chats)
    this.buffers = new Map(); // chatId -> ChatBuffer
    this.orphans = new Map(); // chatId -> messages of chats not listed yet
    this.serverAcked = new Map(); // chatId -> last_acked_sequence the server confirmed
    this.ackSent = new Map(); // chatId -> highest ack written on this connection
    this.syncsOpen = new Map(); // chatId -> syncs without their sync_complete yet
    this.gone = new Set();
    this.pending = new Map(); // client_message_id -> send
    this.state = "disconnected";
    this.ws = null;
    this.wanted = false;
    this.attempt = 0;
    this.readies = 0;
    this.syncedCount = 0;
    this.syncing = false;
    this.syncStarted = false;
    this.lastFrameAt = 0;
    this.timers = {};
    this.storageKey = `messaging.pending.${userId}`;
    this.counter = 0;
    this.#loadPending();
  }

  // ---------------------------------------------------------------- lifecycle

  start() {
    this.wanted = true;
    if (!this.ws) this.#connect();
  }

  /** Close and stay closed (the offline toggle, logout). */
  stop(reason = "offline") {
    this.wanted = false;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    if (this.ws) {
      this.ws.close(1000, reason);
      this.#dropSocket();
    }
    this.#setState("disconnected", { offline: true, reason });
  }

  /** The browser says the network is back: skip the rest of the backoff. */
  reconnectNow() {
    if (this.wanted && !this.ws) this.#connect();
  }

  get reconnects() {
    return Math.max(0, this.readies - 1);
  }

  #connect() {
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    this.#setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url, PROTOCOL);
    } catch (error) {
      this.#scheduleReconnect(1006, String(error));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.lastFrameAt = Date.now();
      this.#write({ type: "auth", token: this.token, device_id: this.deviceId });
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this.#onFrame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.#dropSocket();
      if (AUTH_CLOSES.has(event.code)) {
        this.wanted = false;
        this.#setState("disconnected", { code: event.code, reason: event.reason });
        this.#emit("authfailed", { code: event.code, reason: event.reason });
        return;
      }
      if (this.wanted) this.#scheduleReconnect(event.code, event.reason);
      else this.#setState("disconnected", { offline: true, code: event.code });
    };
  }

  #dropSocket() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = null;
    clearInterval(this.timers.ping);
    clearInterval(this.timers.tick);
    clearTimeout(this.timers.ack);
    this.timers.ping = this.timers.tick = this.timers.ack = null;
    this.syncsOpen.clear();
    this.syncing = false;
  }

  #scheduleReconnect(code, reason) {
    // 4000 (protocol abuse) and 1009 (frame too large) are client bugs: back off further.
    const delay = backoff(code === 4000 || code === 1009 ? this.attempt + 4 : this.attempt);
    this.attempt += 1;
    this.#setState("disconnected", { code, reason, retryInMs: delay });
    this.timers.reconnect = setTimeout(() => this.#connect(), code === 4008 ? 0 : delay);
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.#emit("state", { state, ...detail });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #write(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    if (frame.type !== "auth") this.#emit("frame", { dir: "out", frame });
    else this.#emit("frame", { dir: "out", frame: { type: "auth", device_id: frame.device_id } });
    return true;
  }

  get live() {
    return this.state === "live" || this.state === "syncing";
  }

  // ---------------------------------------------------------------- frames

  #onFrame(frame) {
    this.#emit("frame", { dir: "in", frame });
    switch (frame.type) {
      case "ready":
        return this.#onReady(frame);
      case "message":
        return this.#onMessage(frame, Boolean(frame.replay));
      case "send_ack":
        return this.#onSendAck(frame);
      case "acked":
        return this.#onAcked(frame.chat_id, frame.last_acked_sequence);
      case "sync_complete":
        return this.#onSyncComplete(frame.chat_id, frame.head);
      case "pong":
        if (typeof frame.id === "string" && frame.id.startsWith("t")) {
          this.#emit("rtt", { ms: Date.now() - Number(frame.id.slice(1)) });
        }
        return undefined;
      case "resync":
        return this.#syncChats([...this.buffers.keys()]);
      case "error":
        return this.#onError(frame);
      default:
        return undefined;
    }
  }

  async #onReady(frame) {
    const ws = this.ws;
    this.attempt = 0;
    this.readies += 1;
    this.ackSent = new Map(this.serverAcked);
    this.syncedCount = 0;
    this.syncing = true;
    this.syncStarted = false;
    this.#setState("syncing");
    this.#emit("ready", { reconnects: this.reconnects, ready: frame });
    this.timers.ping = setInterval(() => this.#ping(), PING_MS);
    this.#ping();
    this.timers.tick = setInterval(() => this.#tick(), 1000);
    let summaries = null;
    try {
      summaries = await this.loadChats();
    } catch {
      summaries = null; // REST unavailable: sync the chats known already
    }
    if (ws !== this.ws) return; // closed meanwhile
    if (summaries) this.#learnChats(summaries);
    this.#syncChats([...this.buffers.keys()]);
    this.syncStarted = true;
    if (this.#openSyncs() === 0) this.#finishSync();
    for (const send of this.pending.values()) {
      if (send.state === "sending") this.#writeSend(send);
    }
    this.#scheduleAck(0);
  }

  /** Chats from GET /v1/chats: a chat seen for the first time starts at the user's stored
   * delivery state (`last_acked_sequence`); later messages come by sync. */
  #learnChats(summaries) {
    const fresh = [];
    for (const chat of summaries) {
      const id = chat.chat_id;
      this.gone.delete(id);
      if (!this.buffers.has(id)) {
        this.buffers.set(id, new ChatBuffer(chat.last_acked_sequence));
        fresh.push(id);
      }
      const known = this.serverAcked.get(id) ?? 0;
      const acked = Math.max(known, chat.last_acked_sequence);
      this.serverAcked.set(id, acked);
      if (!this.ackSent.has(id) || this.ackSent.get(id) < acked) this.ackSent.set(id, acked);
      if (acked > known) this.#emit("acked", { chatId: id, lastAcked: acked });
    }
    for (const id of fresh) {
      const waiting = this.orphans.get(id) ?? [];
      this.orphans.delete(id);
      for (const { message, replay } of waiting) this.#onMessage(message, replay);
    }
    return fresh;
  }

  /** Learn chats (after creating one over REST, or a message of an unknown chat). */
  async refreshChats() {
    let summaries;
    try {
      summaries = await this.loadChats();
    } catch {
      return;
    }
    const fresh = this.#learnChats(summaries);
    if (fresh.length && this.live) this.#syncChats(fresh);
  }

  #onMessage(frame, replay) {
    const message = {
      chat_id: frame.chat_id,
      sequence: frame.sequence,
      sender_id: frame.sender_id,
      sender_device: frame.sender_device,
      client_message_id: frame.client_message_id,
      text: frame.text,
      created_at_ms: frame.created_at_ms,
    };
    if (!Number.isSafeInteger(message.sequence) || typeof message.text !== "string") return;
    const buffer = this.buffers.get(message.chat_id);
    if (!buffer) {
      // A chat this page does not know yet (someone started it): hold, then read the list.
      const waiting = this.orphans.get(message.chat_id) ?? [];
      waiting.push({ message, replay });
      this.orphans.set(message.chat_id, waiting);
      clearTimeout(this.timers.discover);
      this.timers.discover = setTimeout(() => this.refreshChats(), 100);
      return;
    }
    this.#release(buffer.receive(message), replay);
    if (buffer.hasGap) this.#scheduleGapSync(message.chat_id);
  }

  /** A message read over REST (history) above what was delivered: the same rules as one from
   * the socket. False when the chat's starting point is not known yet (before the first
   * `ready`): the caller shows it as history, and the sync that follows drops it as a duplicate
   * on the page (by sequence). */
  offer(message) {
    const buffer = this.buffers.get(message.chat_id);
    if (!buffer) return false;
    if (message.sequence > buffer.delivered) {
      this.#release(buffer.receive(message), false);
      if (buffer.hasGap) this.#scheduleGapSync(message.chat_id);
    }
    return true;
  }

  delivered(chatId) {
    return this.buffers.get(chatId)?.delivered ?? 0;
  }

  held(chatId) {
    return this.buffers.get(chatId)?.held.size ?? 0;
  }

  #release(messages, replay) {
    if (!messages.length) return;
    for (const message of messages) {
      if (this.syncing) this.syncedCount += 1;
      const own = this.pending.get(message.client_message_id);
      if (own && message.sender_device === this.deviceId) this.#settleSend(own, message.sequence);
      this.#emit("message", { message, replay });
    }
    this.#scheduleAck(ACK_BATCH_MS);
  }

  #scheduleGapSync(chatId) {
    const key = `gap:${chatId}`;
    if (this.timers[key]) return;
    this.timers[key] = setTimeout(() => {
      this.timers[key] = null;
      const buffer = this.buffers.get(chatId);
      if (buffer?.hasGap && this.live && !(this.syncsOpen.get(chatId) > 0)) {
        this.#syncChats([chatId]);
      }
    }, GAP_DELAY_MS);
  }

  #syncChats(chatIds) {
    const ids = chatIds.filter((id) => !this.gone.has(id) && this.buffers.has(id));
    for (let i = 0; i < ids.length; i += SYNC_CHATS_PER_FRAME) {
      const part = ids.slice(i, i + SYNC_CHATS_PER_FRAME);
      const chats = part.map((id) => ({
        chat_id: id,
        last_acked_sequence: this.buffers.get(id).delivered,
      }));
      if (!this.#write({ type: "sync_request", chats })) return;
      for (const id of part) this.syncsOpen.set(id, (this.syncsOpen.get(id) ?? 0) + 1);
    }
  }

  #openSyncs() {
    let open = 0;
    for (const count of this.syncsOpen.values()) open += count;
    return open;
  }

  #onSyncAnswered(chatId) {
    const open = this.syncsOpen.get(chatId) ?? 0;
    if (open > 1) this.syncsOpen.set(chatId, open - 1);
    else this.syncsOpen.delete(chatId);
  }

  #onSyncComplete(chatId, head) {
    this.#onSyncAnswered(chatId);
    const buffer = this.buffers.get(chatId);
    if (buffer && Number.isSafeInteger(head)) this.#release(buffer.skipTo(head), true);
    if (this.syncing && this.syncStarted && this.#openSyncs() === 0) this.#finishSync();
  }

  #finishSync() {
    this.syncing = false;
    this.#setState("live");
    this.#emit("synced", { count: this.syncedCount });
  }

  // ---------------------------------------------------------------- acks

  #scheduleAck(delay) {
    if (this.timers.ack) return;
    this.timers.ack = setTimeout(() => {
      this.timers.ack = null;
      this.#flushAcks();
    }, delay);
  }

  /** Send the acks still waiting for their batch now (the page is being left). */
  flushAcks() {
    clearTimeout(this.timers.ack);
    this.timers.ack = null;
    this.#flushAcks();
  }

  #flushAcks() {
    if (!this.live) return;
    for (const [chatId, buffer] of this.buffers) {
      if (this.gone.has(chatId)) continue;
      if (buffer.delivered > (this.ackSent.get(chatId) ?? 0)) {
        if (!this.#write({ type: "ack", chat_id: chatId, sequence: buffer.delivered })) return;
        this.ackSent.set(chatId, buffer.delivered);
      }
    }
  }

  #onAcked(chatId, lastAcked) {
    if (!Number.isSafeInteger(lastAcked)) return;
    const value = Math.max(this.serverAcked.get(chatId) ?? 0, lastAcked);
    this.serverAcked.set(chatId, value);
    this.#emit("acked", { chatId, lastAcked: value });
  }

  acked(chatId) {
    return this.serverAcked.get(chatId) ?? 0;
  }

  // ---------------------------------------------------------------- sends

  /** Queue a message; it is written now if connected, else after the next `ready`. */
  send(chatId, text) {
    this.counter += 1;
    const random = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
    const send = {
      chat_id: chatId,
      client_message_id: `${this.deviceId}-${Date.now().toString(36)}-${random}${this.counter}`,
      text,
      state: "sending",
      sequence: null,
      created_ms: Date.now(),
      written_ms: 0,
      attempts: 0,
      error: null,
    };
    this.pending.set(send.client_message_id, send);
    this.#savePending();
    this.#emit("send", { send });
    if (this.live) this.#writeSend(send);
    return send;
  }

  sends() {
    return [...this.pending.values()];
  }

  #writeSend(send) {
    const frame = {
      type: "send_message",
      chat_id: send.chat_id,
      client_message_id: send.client_message_id,
      text: send.text,
    };
    if (this.#write(frame)) {
      send.attempts += 1;
      send.written_ms = Date.now();
    }
  }

  #onSendAck(frame) {
    const send = this.pending.get(frame.client_message_id);
    if (!send || send.state !== "sending") return;
    send.state = "acked";
    send.sequence = frame.sequence;
    send.duplicate = Boolean(frame.duplicate);
    this.#savePending();
    this.#emit("send", { send });
  }

  /** The stored message came back in order: the send is settled. */
  #settleSend(send, sequence) {
    if (send.state === "sending") {
      send.state = "acked";
      send.sequence = sequence;
    }
    this.pending.delete(send.client_message_id);
    this.#savePending();
  }

  #onError(frame) {
    const ref = frame.ref && typeof frame.ref === "object" ? frame.ref : {};
    const retriable = frame.retriable === true || RETRIABLE.has(frame.code);
    const advisedMs = Number.isSafeInteger(frame.retry_after_ms) ? frame.retry_after_ms : 0;
    if (typeof ref.client_message_id === "string") {
      const send = this.pending.get(ref.client_message_id);
      if (!send) return;
      if (retriable) {
        const delay = Math.max(advisedMs, backoff(Math.min(send.attempts, 5)));
        send.written_ms = Date.now() - SEND_TIMEOUT_MS + delay;
        return; // the ticker writes it again
      }
      send.state = "failed";
      send.error = `${frame.code}: ${frame.message}`;
      this.pending.delete(send.client_message_id);
      this.#savePending();
      this.#emit("send", { send });
      return;
    }
    if (ref.sync === true && retriable) {
      // A sync answered with a retriable error in place of its sync_complete: ask again later.
      let ids = [...this.syncsOpen.keys()];
      if (typeof ref.chat_id === "string") ids = [ref.chat_id];
      else if (Array.isArray(ref.chat_ids)) {
        ids = ref.chat_ids.filter((id) => typeof id === "string");
      }
      for (const id of ids) this.#onSyncAnswered(id);
      setTimeout(() => this.#syncChats(ids), Math.max(advisedMs, 1000));
      return;
    }
    if (typeof ref.chat_id === "string") {
      const chatId = ref.chat_id;
      if (frame.code === "not_a_member" || frame.code === "not_found") {
        this.gone.add(chatId);
        const wasOpen = this.syncsOpen.delete(chatId);
        if (wasOpen && this.syncing && this.syncStarted && this.#openSyncs() === 0) {
          this.#finishSync();
        }
        this.#emit("chatgone", { chatId, code: frame.code });
      }
      return;
    }
  }

  // ---------------------------------------------------------------- timers

  #ping() {
    this.#write({ type: "ping", id: `t${Date.now()}` });
  }

  #tick() {
    const now = Date.now();
    if (this.ws && now - this.lastFrameAt > DEAD_MS) {
      // Nothing at all, not even a pong: the connection is gone without a close frame.
      const ws = this.ws;
      this.#dropSocket();
      ws.close(1000, "no frames from the server");
      this.#scheduleReconnect(1006, "no frames from the server");
      return;
    }
    for (const send of this.pending.values()) {
      if (send.state !== "sending") continue;
      if (now - send.created_ms > SEND_MAX_AGE_MS) {
        send.state = "failed";
        send.error = "expired: no answer within 24 hours";
        this.pending.delete(send.client_message_id);
        this.#savePending();
        this.#emit("send", { send });
      } else if (this.live && now - send.written_ms > SEND_TIMEOUT_MS) {
        this.#writeSend(send);
      }
    }
  }

  // ---------------------------------------------------------------- persistence

  #loadPending() {
    try {
      const saved = JSON.parse(localStorage.getItem(this.storageKey) ?? "[]");
      for (const send of saved) {
        if (send && typeof send.client_message_id === "string" && send.state === "sending") {
          send.written_ms = 0;
          this.pending.set(send.client_message_id, send);
        }
      }
    } catch {
      localStorage.removeItem(this.storageKey);
    }
  }

  #savePending() {
    const open = [...this.pending.values()].filter((send) => send.state === "sending");
    if (open.length) localStorage.setItem(this.storageKey, JSON.stringify(open));
    else localStorage.removeItem(this.storageKey);
  }
}
