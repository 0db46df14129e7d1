// The page: the live call list, one call's conversation and the followed number. The DOM
// lives here; what to show comes from transcript.js, calls.js and follow.js, the link from
// connection.js. The stored calls (the recent list, a stored transcript) are recent-view.js's.

import {
  callTitle,
  formatDuration,
  formatOffset,
  otherParameters,
  speakerName,
  speakerNames,
} from "./calls.js";
import { ViewerConnection } from "./connection.js";
import {
  callHasNumber,
  followDetail,
  followErrorText,
  followedInUrl,
  opensFollowed,
  typedNumber,
  urlFollowing,
} from "./follow.js";
import { RecentCalls, STORED_HASH } from "./recent-view.js";
import { Transcript } from "./transcript.js";

const TOKEN_KEY = "twilio-dg-proxy.token";
const CALL_HASH = "#call/";
// Within this many pixels of the bottom the transcript counts as "at the live end".
const BOTTOM_SLACK_PX = 48;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  statusText: $("status-text"),
  statusCountdown: $("status-countdown"),
  retry: $("retry"),
  askToken: $("ask-token"),
  calls: $("calls"),
  callCount: $("call-count"),
  noCalls: $("no-calls"),
  callPane: $("call"),
  pickACall: $("pick-a-call"),
  callTitle: $("call-title"),
  callSid: $("call-sid"),
  callStarted: $("call-started"),
  callState: $("call-state"),
  callParameters: $("call-parameters"),
  scroller: $("scroller"),
  historyNote: $("history-note"),
  callNote: $("call-note"),
  lines: $("lines"),
  noLines: $("no-lines"),
  callEnded: $("call-ended"),
  backToLive: $("back-to-live"),
  tokenDialog: $("token-dialog"),
  tokenForm: $("token-form"),
  tokenInput: $("token-input"),
  tokenError: $("token-error"),
  tokenCancel: $("token-cancel"),
  followForm: $("follow-form"),
  followInput: $("follow-input"),
  following: $("following"),
  followNumber: $("follow-number"),
  followDetail: $("follow-detail"),
  unfollow: $("unfollow"),
  followError: $("follow-error"),
};

const state = {
  calls: new Map(), // callSid → call metadata, oldest first
  clockOffset: 0, // the server's clock minus this browser's (ms)
  link: { name: "connecting" },
  view: null, // the call being watched: see openView()
  followLive: true,
  asked: new Set(), // callSids subscribed to on this socket and not answered yet
  follow: {
    wanted: followedInUrl(location.href), // the number to follow ("": none), sent on connect
    number: "", // as the proxy echoed it (`followed`)
    confirmed: false, // the proxy follows it on this socket
    awaiting: 0, // `follow` commands sent on this socket and not answered yet
    error: "",
    seen: new Set(), // callSids of the number's calls the proxy offered (newest shown)
  },
};

// --- Token -----------------------------------------------------------------------------

function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    return ""; // storage disabled: no token
  }
}

function setToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage disabled: the token lasts until the next reload
  }
}

function askForToken(rejected) {
  ui.tokenError.hidden = !rejected;
  ui.tokenInput.value = "";
  if (!ui.tokenDialog.open) ui.tokenDialog.showModal();
  ui.tokenInput.focus();
}

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim();
  if (!token) return;
  setToken(token);
  ui.tokenDialog.close();
  connection.connect();
});
ui.tokenCancel.addEventListener("click", () => ui.tokenDialog.close());
ui.askToken.addEventListener("click", () => askForToken(false));

// --- Stored calls ----------------------------------------------------------------------

const recent = new RecentCalls({ pageUrl: location.href, getToken });

// --- Connection ------------------------------------------------------------------------

const connection = new ViewerConnection({
  pageUrl: location.href,
  getToken,
  onMessage: handleMessage,
  onState: (link) => {
    state.link = link;
    if (link.name === "unauthorized") {
      askForToken(link.hadToken);
      recent.needsToken();
    }
    if (link.name !== "open" && state.view?.subscribed) {
      state.view.subscribed = false; // until the next `subscribed`
      renderView();
    }
    if (link.name !== "open") {
      state.asked.clear();
      state.follow.confirmed = false; // a new socket follows again (`calls`)
      state.follow.awaiting = 0;
    }
    renderStatus();
    renderFollow();
  },
});

ui.retry.addEventListener("click", () => connection.connect());
window.addEventListener("online", () => {
  if (state.link.name === "waiting") connection.connect();
});

function handleMessage(message) {
  switch (message.type) {
    case "calls":
      state.clockOffset = Number(message.now) - Date.now() || 0;
      state.calls = new Map(message.calls.map((call) => [call.callSid, call]));
      renderCalls();
      resubscribe();
      sendFollow();
      recent.refresh(); // (re)connected, so the token is good: calls may have ended meanwhile
      break;
    case "call_started":
      state.calls.set(message.call.callSid, message.call);
      renderCalls();
      if (state.view?.callSid === message.call.callSid && !state.view.subscribed) resubscribe();
      break;
    case "call_ended":
      recent.callEnded(state.calls.get(message.callSid) ?? { callSid: message.callSid });
      state.calls.delete(message.callSid);
      renderCalls();
      if (state.view?.callSid === message.callSid) endView(message);
      break;
    case "subscribed":
      if (!state.asked.delete(message.callSid)) joinedByFollow(message);
      if (state.view?.callSid === message.callSid) {
        const view = state.view;
        view.call = message.call;
        view.names = speakerNames(message.call.customParameters);
        view.subscribed = true;
        view.everLive = true;
        view.note = "";
        view.truncated = Boolean(message.historyTruncated);
        // After a reconnect: what was provisional will be said again; finals already shown
        // are recognised by channel and start time, so none is added twice.
        view.transcript.clearInterims();
        view.transcript.applyAll(message.history);
        renderView();
        renderFollow();
      }
      break;
    case "deepgram":
      if (state.view?.callSid === message.callSid && state.view.subscribed) {
        if (state.view.transcript.apply(message.message)) scheduleLines();
      }
      break;
    case "error":
      if (message.number !== undefined) {
        followRefused(message);
        break;
      }
      state.asked.delete(message.callSid);
      if (state.view?.callSid === message.callSid) {
        state.view.note = state.view.ended ? "" : message.reason;
        renderView();
      }
      break;
    case "followed":
      followConfirmed(message.number);
      break;
    default:
      break; // "unsubscribed", "unfollowed", and types added later
  }
}

/** Ask again for the watched call: after a (re)connect, or when the call shows up. */
function resubscribe() {
  const view = state.view;
  if (!view || view.ended || !connection.isOpen) return;
  view.subscribed = false;
  if (state.calls.has(view.callSid)) {
    if (connection.send({ type: "subscribe", callSid: view.callSid })) state.asked.add(view.callSid);
  } else if (view.everLive) {
    endView({ whileAway: true }); // it ended while the page was disconnected
  } else {
    view.note = "This call is not active. It may have ended.";
    renderView();
  }
}

// --- Choosing a call -------------------------------------------------------------------

function selectedSid() {
  return location.hash.startsWith(CALL_HASH)
    ? decodeURIComponent(location.hash.slice(CALL_HASH.length))
    : null;
}

function storedSid() {
  return location.hash.startsWith(STORED_HASH)
    ? decodeURIComponent(location.hash.slice(STORED_HASH.length))
    : null;
}

/** Open `callSid` in the main pane (null: none); `ask` false when the proxy has subscribed
 * the page to it already (a followed number's call). */
function openView(callSid, { ask = true } = {}) {
  const previous = state.view;
  if (previous?.callSid === callSid) return;
  if (previous && !previous.ended) connection.send({ type: "unsubscribe", callSid: previous.callSid });
  state.view = null;
  ui.lines.replaceChildren();
  if (callSid) {
    const call = state.calls.get(callSid) ?? { callSid, customParameters: {}, startedAt: null };
    state.view = {
      callSid,
      call,
      names: speakerNames(call.customParameters),
      transcript: new Transcript(),
      subscribed: false,
      everLive: state.calls.has(callSid),
      ended: null, // {at, reason, code} once over
      note: "",
      truncated: false,
      lineElements: new Map(),
    };
    state.followLive = true;
    if (ask) resubscribe();
  }
  document.body.classList.toggle("has-call", Boolean(callSid || recent.openSid));
  renderCalls();
  renderView();
}

function endView(event) {
  const view = state.view;
  if (!view || view.ended) return;
  view.ended = {
    at: serverNow(),
    code: event.code ?? null,
    reason: event.reason ?? "",
    whileAway: Boolean(event.whileAway),
  };
  view.note = "";
  view.transcript.end();
  renderView();
  renderFollow();
}

window.addEventListener("hashchange", () => {
  recent.show(storedSid());
  openView(selectedSid());
  // Keyboard and screen-reader users land where the content changed.
  const heading = state.view ? ui.callTitle : recent.openSid ? $("stored-title") : $("calls-heading");
  heading.focus({ preventScroll: true });
});

// --- Rendering: status and call list ---------------------------------------------------

function renderStatus() {
  const link = state.link;
  ui.status.dataset.state = link.name;
  ui.retry.hidden = link.name !== "waiting";
  ui.askToken.hidden = link.name !== "unauthorized";
  const text = statusText(link);
  if (ui.statusText.textContent !== text) ui.statusText.textContent = text;
  // The countdown changes every second: shown, but not read out each time.
  const seconds = link.name === "waiting" ? Math.ceil((link.retryAt - Date.now()) / 1000) : 0;
  ui.statusCountdown.textContent = seconds > 0 ? `(in ${seconds} s)` : "";
}

function statusText(link) {
  switch (link.name) {
    case "open":
      return "Connected";
    case "connecting":
      return "Connecting…";
    case "unauthorized":
      return "Token required";
    case "waiting":
      return `Disconnected (${link.why}). Reconnecting…`;
    default:
      return link.name;
  }
}

function serverNow() {
  return Date.now() + state.clockOffset;
}

const callItems = new Map(); // callSid → its <li>

function renderCalls() {
  const selected = state.view?.callSid;
  const items = [];
  for (const [callSid, item] of callItems) {
    if (!state.calls.has(callSid)) callItems.delete(callSid);
  }
  for (const call of state.calls.values()) {
    let item = callItems.get(call.callSid);
    if (!item) {
      item = callItem(call);
      callItems.set(call.callSid, item);
    }
    const link = item.querySelector("a");
    if (call.callSid === selected) link.setAttribute("aria-current", "true");
    else link.removeAttribute("aria-current");
    items.push(item);
  }
  // Move only what changed, so focus stays on the link it was on.
  items.forEach((item, index) => {
    if (ui.calls.children[index] !== item) ui.calls.insertBefore(item, ui.calls.children[index] ?? null);
  });
  while (ui.calls.children.length > items.length) ui.calls.lastElementChild.remove();
  ui.noCalls.hidden = items.length > 0;
  for (const [callSid, item] of callItems) item.querySelector(".followed-chip").hidden = !isFollowed(callSid);
  ui.callCount.textContent = items.length ? `(${items.length})` : "";
  renderFollow(); // how many of them have the followed number
}

function callItem(call) {
  const item = document.createElement("li");
  item.dataset.callSid = call.callSid;
  const link = document.createElement("a");
  link.className = "call";
  link.href = CALL_HASH + encodeURIComponent(call.callSid);
  const title = element("span", "call-title", callTitle(call));
  const when = element("span", "call-when");
  when.append(
    element("span", "", `started ${clockTime(call.startedAt)} · `),
    durationElement(call.startedAt),
  );
  link.append(title);
  if (title.textContent !== call.callSid) link.append(element("code", "call-sid", call.callSid));
  const parameters = otherParameters(call);
  if (parameters.length) {
    const list = element("span", "call-parameters");
    for (const [name, value] of parameters) list.append(element("span", "chip", `${name}: ${value}`));
    link.append(list);
  }
  link.append(when, element("span", "chip followed-chip", "Followed number"));
  item.append(link);
  return item;
}

function durationElement(startedAt) {
  const span = element("span", "duration");
  span.dataset.startedAt = String(startedAt);
  span.textContent = formatDuration(serverNow() - startedAt);
  return span;
}

function clockTime(epochMs) {
  return epochMs ? new Date(epochMs).toLocaleTimeString() : "?";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- Rendering: one call ---------------------------------------------------------------

function renderView() {
  const view = state.view;
  ui.callPane.hidden = !view;
  ui.pickACall.hidden = Boolean(view || recent.openSid);
  if (!view) return;
  const call = view.call;
  ui.callTitle.textContent = callTitle(call);
  ui.callSid.textContent = call.callSid;
  ui.callSid.hidden = ui.callTitle.textContent === call.callSid;
  ui.callStarted.replaceChildren();
  if (call.startedAt) {
    ui.callStarted.append(`started ${clockTime(call.startedAt)} · `);
    if (view.ended) {
      ui.callStarted.append(view.ended.whileAway ? "ended" : formatDuration(view.ended.at - call.startedAt));
    } else {
      ui.callStarted.append(durationElement(call.startedAt));
    }
  }
  const callState = view.ended ? "ended" : view.subscribed ? "live" : "connecting";
  ui.callState.dataset.state = callState;
  ui.callState.textContent = { ended: "Ended", live: "Live", connecting: "Connecting…" }[callState];
  ui.callParameters.replaceChildren();
  for (const [name, value] of Object.entries(call.customParameters ?? {})) {
    ui.callParameters.append(element("dt", "", name), element("dd", "", value));
  }
  ui.historyNote.hidden = !view.truncated;
  ui.callNote.hidden = !view.note;
  ui.callNote.textContent = view.note;
  ui.callEnded.hidden = !view.ended;
  if (view.ended) ui.callEnded.textContent = endedText(view);
  renderLines();
}

function endedText(view) {
  const ended = view.ended;
  if (ended.whileAway) return "Call ended while this page was disconnected.";
  const after = view.call.startedAt ? ` after ${formatDuration(ended.at - view.call.startedAt)}` : "";
  const why = ended.code && ended.code !== 1000 && ended.reason ? `: ${ended.reason}` : "";
  return `Call ended at ${clockTime(ended.at)}${after}${why}.`;
}

let linesScheduled = false;
function scheduleLines() {
  if (linesScheduled) return;
  linesScheduled = true;
  requestAnimationFrame(() => {
    linesScheduled = false;
    renderLines();
  });
}

function renderLines() {
  const view = state.view;
  if (!view) return;
  const lines = view.transcript.lines();
  const seen = new Set();
  lines.forEach((line, index) => {
    seen.add(line.key);
    let node = view.lineElements.get(line.key);
    if (!node) {
      node = lineElement(line, view);
      view.lineElements.set(line.key, node);
    }
    updateLine(node, line);
    if (ui.lines.children[index] !== node) ui.lines.insertBefore(node, ui.lines.children[index] ?? null);
  });
  for (const [key, node] of view.lineElements) {
    if (!seen.has(key)) {
      node.remove();
      view.lineElements.delete(key);
    }
  }
  ui.noLines.hidden = lines.length > 0 || Boolean(view.ended);
  if (state.followLive) scrollToLive();
  else ui.backToLive.hidden = false;
}

function lineElement(line, view) {
  const node = element("li", "line");
  node.dataset.key = line.key;
  node.dataset.channel = String(line.channel);
  const meta = element("div", "meta");
  const time = element("time", "at", formatOffset(line.spoken));
  if (view.call.startedAt) {
    const wall = new Date(view.call.startedAt + line.spoken * 1000);
    time.dateTime = wall.toISOString();
    time.title = wall.toLocaleTimeString();
  }
  meta.append(element("span", "speaker", speakerName(view.names, line.channel)), time);
  const bubble = element("p", "bubble");
  bubble.append(element("span", "final"), element("span", "interim"));
  node.append(meta, bubble);
  return node;
}

function updateLine(node, line) {
  const [finalText, interimText] = node.querySelectorAll(".bubble > span");
  if (finalText.textContent !== line.text) finalText.textContent = line.text;
  const pending = line.pending ? (line.text ? " " : "") + line.pending : "";
  if (interimText.textContent !== pending) interimText.textContent = pending;
  // Provisional: nothing of it is final yet.
  node.classList.toggle("pending", !line.text);
  node.classList.toggle("complete", line.complete);
  // The speaker name may have changed (the call's parameters arrive with `subscribed`).
  const speaker = node.querySelector(".speaker");
  const name = speakerName(state.view.names, line.channel);
  if (speaker.textContent !== name) speaker.textContent = name;
}

// --- Auto-scroll -----------------------------------------------------------------------

function atLiveEnd() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight <= BOTTOM_SLACK_PX;
}

function scrollToLive() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
  ui.backToLive.hidden = true;
}

ui.scroller.addEventListener("scroll", () => {
  state.followLive = atLiveEnd();
  if (state.followLive) ui.backToLive.hidden = true;
});
ui.backToLive.addEventListener("click", () => {
  state.followLive = true;
  scrollToLive();
  ui.scroller.focus({ preventScroll: true });
});

// --- Clocks ----------------------------------------------------------------------------

setInterval(() => {
  const now = serverNow();
  for (const span of document.querySelectorAll(".duration[data-started-at]")) {
    span.textContent = formatDuration(now - Number(span.dataset.startedAt));
  }
  if (state.link.name === "waiting") renderStatus();
}, 1000);

// --- Following a number ----------------------------------------------------------------

/** Whether the call is one of the followed number's: the proxy joined the page to it, or
 * (opened by its callSid, so not offered) its `From` or `To` is the number. */
function isFollowed(callSid) {
  const follow = state.follow;
  if (!follow.wanted) return false;
  if (follow.seen.has(callSid)) return true;
  const call = state.calls.get(callSid) ?? (state.view?.callSid === callSid ? state.view.call : null);
  return callHasNumber(call, follow.number || follow.wanted);
}

/** Ask the proxy to follow the wanted number (on each new socket, and when it changes). */
function sendFollow() {
  const follow = state.follow;
  if (follow.wanted && connection.send({ type: "follow", number: follow.wanted })) follow.awaiting += 1;
  renderFollow();
}

/** Keep the followed number in the address (a reload follows it again). */
function keepInUrl(number) {
  const url = urlFollowing(location.href, number);
  if (url !== location.href) history.replaceState(history.state, "", url);
}

function followConfirmed(number) {
  const follow = state.follow;
  follow.awaiting = Math.max(0, follow.awaiting - 1);
  if (follow.awaiting || !follow.wanted) return; // an answer to an earlier follow
  follow.wanted = number; // as the proxy writes it: sent so on reconnect, kept so in the URL
  follow.number = number;
  follow.confirmed = true;
  follow.error = "";
  keepInUrl(number);
  renderFollow();
}

function followRefused(message) {
  const follow = state.follow;
  follow.awaiting = Math.max(0, follow.awaiting - 1);
  if (follow.awaiting || !follow.wanted) return;
  const hadFocus = ui.following.contains(document.activeElement);
  stopFollowing(false);
  follow.error = followErrorText(message);
  if (!ui.followInput.value) ui.followInput.value = message.number ?? "";
  renderFollow();
  if (hadFocus) ui.followInput.focus(); // the stop button went away: back to the box
}

/** Forget the followed number (telling the proxy when `tell`); its calls shown go on. */
function stopFollowing(tell = true) {
  const follow = state.follow;
  const number = follow.number || follow.wanted;
  if (tell && number && (follow.confirmed || follow.awaiting)) connection.send({ type: "unfollow", number });
  follow.wanted = "";
  follow.number = "";
  follow.confirmed = false;
  follow.error = "";
  follow.seen = new Set();
  keepInUrl("");
  renderCalls();
  renderFollow();
}

/**
 * The proxy subscribed the page to a call it did not ask for: a call with the followed
 * number. The newest of them takes the main pane; the others stay listed (unsubscribed).
 */
function joinedByFollow(message) {
  const callSid = message.callSid;
  const follow = state.follow;
  if (!follow.wanted) {
    // Joined just before an `unfollow` took effect.
    if (state.view?.callSid !== callSid) connection.send({ type: "unsubscribe", callSid });
    return;
  }
  if (!state.calls.has(callSid)) state.calls.set(callSid, message.call);
  const seenBefore = follow.seen.has(callSid);
  follow.seen.add(callSid);
  renderCalls();
  const view = state.view;
  if (view?.callSid === callSid) return;
  const shown = view && {
    startedAt: view.call.startedAt,
    ended: Boolean(view.ended),
    followed: isFollowed(view.callSid),
  };
  if (!opensFollowed(shown, message.call, seenBefore)) {
    connection.send({ type: "unsubscribe", callSid });
    renderFollow();
    return;
  }
  // Opened without moving the focus: the user did not ask for it now. The follow's status
  // line (a live region) says what happened.
  history.replaceState(history.state, "", CALL_HASH + encodeURIComponent(callSid));
  recent.show(null);
  openView(callSid, { ask: false });
}

function renderFollow() {
  const follow = state.follow;
  const following = Boolean(follow.wanted);
  ui.followForm.hidden = following;
  ui.following.hidden = !following;
  ui.followError.hidden = !follow.error;
  if (ui.followError.textContent !== follow.error) ui.followError.textContent = follow.error;
  ui.followInput.setAttribute("aria-invalid", String(Boolean(follow.error)));
  if (following) {
    const number = follow.number || follow.wanted;
    if (ui.followNumber.textContent !== number) ui.followNumber.textContent = number;
    const view = state.view;
    const shown = view && isFollowed(view.callSid) ? { ended: Boolean(view.ended) } : null;
    const others = [...state.calls.keys()].filter((sid) => sid !== view?.callSid && isFollowed(sid)).length;
    const detail = followDetail({ connected: connection.isOpen, confirmed: follow.confirmed, shown, others });
    if (ui.followDetail.textContent !== detail) ui.followDetail.textContent = detail;
  }
}

ui.followForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const number = typedNumber(ui.followInput.value);
  if (!number) return;
  if (state.follow.wanted) stopFollowing();
  state.follow.wanted = number;
  state.follow.error = "";
  keepInUrl(number);
  sendFollow();
  ui.unfollow.focus(); // the form gave way to it
});
ui.unfollow.addEventListener("click", () => {
  stopFollowing();
  ui.followInput.focus();
});

// --- Start -----------------------------------------------------------------------------

recent.show(storedSid());
openView(selectedSid());
renderStatus();
if (state.follow.wanted) ui.followInput.value = state.follow.wanted;
renderFollow();
connection.connect();
