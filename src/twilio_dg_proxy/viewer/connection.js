// The viewer's link to the proxy: /viewer/ws, reopened with backoff when it drops. No DOM.
//
// Before each attempt it asks /viewer/auth whether its token is accepted: a browser cannot
// read the HTTP status of a refused WebSocket upgrade, and a wrong token must lead to a
// question, not to retrying forever.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;
// A connection that stayed up this long was healthy: the next drop starts the backoff over.
const HEALTHY_AFTER_MS = 5_000;

/** The delay before reconnect attempt `attempt` (0, 1, ...): doubling, capped, jittered. */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** The WebSocket URL of the viewer protocol, relative to the page (works under a prefix). */
export function viewerSocketUrl(pageUrl, token) {
  const url = new URL("viewer/ws", pageUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  if (token) url.searchParams.set("token", token);
  return url;
}

/**
 * Keeps one viewer connection open. `onMessage(message)` gets each decoded server message;
 * `onState(state)` gets `{name, ...}` whenever the link changes: "connecting", "open",
 * "waiting" (with `retryAt`, a Date.now() time, and `why`), "unauthorized" (with `hadToken`).
 */
export class ViewerConnection {
  #pageUrl;
  #getToken;
  #onMessage;
  #onState;
  #socket = null;
  #attempt = 0;
  #timer = null;
  #generation = 0; // bumps on every attempt, so callbacks of older sockets are ignored

  constructor({ pageUrl, getToken, onMessage, onState }) {
    this.#pageUrl = pageUrl;
    this.#getToken = getToken;
    this.#onMessage = onMessage;
    this.#onState = onState;
  }

  /** Connect now (again, if already connected or waiting). */
  connect() {
    clearTimeout(this.#timer);
    this.#timer = null;
    const old = this.#socket;
    this.#socket = null;
    if (old) old.close(1000, "reconnecting");
    this.#open(++this.#generation);
  }

  /** Send a command object if the socket is open; returns whether it was sent. */
  send(command) {
    if (this.#socket?.readyState !== WebSocket.OPEN) return false;
    this.#socket.send(JSON.stringify(command));
    return true;
  }

  /** Whether commands can be sent now. */
  get isOpen() {
    return this.#socket?.readyState === WebSocket.OPEN;
  }

  async #open(generation) {
    this.#onState({ name: "connecting" });
    const token = this.#getToken();
    let response;
    try {
      response = await fetch(new URL("viewer/auth", this.#pageUrl), {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        cache: "no-store",
      });
    } catch (error) {
      if (generation === this.#generation) this.#retry(generation, "server unreachable");
      return;
    }
    if (generation !== this.#generation) return;
    if (response.status === 401) {
      this.#onState({ name: "unauthorized", hadToken: Boolean(token) });
      return;
    }
    if (!response.ok) {
      this.#retry(generation, `HTTP ${response.status}`);
      return;
    }
    const socket = new WebSocket(viewerSocketUrl(this.#pageUrl, token));
    this.#socket = socket;
    let openedAt = null;
    socket.addEventListener("open", () => {
      if (generation !== this.#generation) return;
      openedAt = Date.now();
      this.#onState({ name: "open" });
    });
    socket.addEventListener("message", (event) => {
      if (generation !== this.#generation) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to show
      }
      this.#onMessage(message);
    });
    socket.addEventListener("close", (event) => {
      if (generation !== this.#generation) return;
      this.#socket = null;
      if (openedAt !== null && Date.now() - openedAt >= HEALTHY_AFTER_MS) this.#attempt = 0;
      const why = event.code === 1006 ? "connection lost" : `closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
      this.#retry(generation, why);
    });
  }

  #retry(generation, why) {
    const delay = backoffDelay(this.#attempt++);
    this.#onState({ name: "waiting", retryAt: Date.now() + delay, why });
    this.#timer = setTimeout(() => {
      if (generation === this.#generation) this.connect();
    }, delay);
  }
}
