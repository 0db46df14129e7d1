// The recent-calls list and a stored call's transcript: the DOM and the requests to /calls.
// What to show comes from recent.js and calls.js; viewer.js owns the token, the live
// connection and which pane is open, and tells this module when to look again.

import { callTitle, formatOffset } from "./calls.js";
import {
  RecentList,
  callsUrl,
  describeStored,
  downloadLinks,
  errorText,
  normalizeNumber,
  storedLines,
  transcriptUrl,
} from "./recent.js";

export const STORED_HASH = "#stored/";
// A call that just ended is saved by the store's writer in the background, a moment after
// the end: if a refresh does not list it yet, look again after each of these delays.
const LOOK_AGAIN_MS = Object.freeze([250, 500, 1000, 2000, 4000, 8000]);

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clockTime(epochMs) {
  return epochMs ? new Date(epochMs).toLocaleTimeString() : "?";
}

/**
 * The "Recent calls" section and the stored-call pane. `getToken()` gives the page's token
 * ("" for none): requests send it as `Authorization: Bearer`, download links in their query.
 */
export class RecentCalls {
  #pageUrl;
  #getToken;
  #ui;
  #list = new RecentList();
  #items = new Map(); // callSid → its <li>
  #generation = 0; // bumps when the list starts over (a new filter): older answers are ignored
  #refreshes = 0; // numbers each refresh, so a slow one never undoes a later one
  #appliedRefresh = 0;
  #loadingMore = false;
  #awaited = new Set(); // callSids of calls that ended and should appear once stored
  #lookAgain = { timer: null, attempt: 0 };
  #stored = { callSid: null, generation: 0 };

  constructor({ pageUrl, getToken }) {
    this.#pageUrl = pageUrl;
    this.#getToken = getToken;
    this.#ui = {
      filter: $("recent-filter"),
      from: $("recent-from"),
      error: $("recent-error"),
      calls: $("recent-calls"),
      empty: $("no-recent"),
      more: $("recent-more"),
      retry: $("recent-retry"),
      pane: $("stored"),
      title: $("stored-title"),
      sid: $("stored-sid"),
      when: $("stored-when"),
      parameters: $("stored-parameters"),
      downloads: $("stored-downloads"),
      downloadLinks: $("stored-download-links"),
      truncated: $("stored-truncated"),
      note: $("stored-note"),
      lines: $("stored-lines"),
      ended: $("stored-ended"),
    };
    this.#ui.filter.addEventListener("submit", (event) => {
      event.preventDefault();
      this.setFilter(this.#ui.from.value);
    });
    // Clearing the box (its ✕, or Escape) lists every call again.
    this.#ui.from.addEventListener("search", () => {
      if (!this.#ui.from.value && this.#list.filter) this.setFilter("");
    });
    this.#ui.more.addEventListener("click", () => this.more());
    this.#ui.retry.addEventListener("click", () => this.refresh());
  }

  /** The callSid of the stored call shown, or null. */
  get openSid() {
    return this.#stored.callSid;
  }

  /** Fetch the newest page again and merge it into the list. */
  async refresh() {
    const generation = this.#generation;
    const number = ++this.#refreshes;
    const answer = await this.#get(callsUrl(this.#pageUrl, { from: this.#list.filter }));
    if (generation !== this.#generation || number < this.#appliedRefresh) return;
    this.#appliedRefresh = number;
    if (answer.ok) {
      this.#list.refreshed(answer.body);
      this.#showError("");
    } else {
      this.#showError(errorText(answer.status, answer.body, "list"));
    }
    this.#render();
    this.#checkAwaited(answer.ok);
  }

  /** Fetch the page after the last one loaded. */
  async more() {
    if (this.#loadingMore || !this.#list.next) return;
    const generation = this.#generation;
    this.#loadingMore = true;
    this.#ui.calls.setAttribute("aria-busy", "true");
    const url = callsUrl(this.#pageUrl, { from: this.#list.filter, before: this.#list.next });
    const answer = await this.#get(url);
    this.#loadingMore = false;
    this.#ui.calls.setAttribute("aria-busy", "false");
    if (generation !== this.#generation) return;
    if (answer.ok) {
      this.#list.appended(answer.body);
      this.#showError("");
    } else {
      this.#showError(errorText(answer.status, answer.body, "list"));
    }
    this.#render();
  }

  /** List only the calls from `text` (a number; "" for every call), from the newest. */
  setFilter(text) {
    const filter = normalizeNumber(text);
    this.#ui.from.value = filter;
    this.#generation += 1;
    this.#list = new RecentList(filter);
    this.#loadingMore = false;
    this.#render();
    return this.refresh();
  }

  /** A live call ended (`call`: what the viewer protocol said of it): list it once stored. */
  callEnded(call) {
    if (this.#list.expects(call)) this.#awaited.add(call.callSid);
    this.#lookAgain.attempt = 0;
    clearTimeout(this.#lookAgain.timer);
    this.#lookAgain.timer = null;
    this.refresh();
  }

  /** The live link needs a token the page does not have (or was refused). */
  needsToken() {
    if (!this.#list.loaded) this.#showError(errorText(401, null, "list"));
    this.#ui.empty.hidden = true;
  }

  #checkAwaited(ok) {
    for (const callSid of this.#awaited) {
      if (this.#list.has(callSid)) this.#awaited.delete(callSid);
    }
    const delay = LOOK_AGAIN_MS[this.#lookAgain.attempt];
    if (!ok || !this.#awaited.size || delay === undefined || this.#lookAgain.timer !== null) {
      if (!ok || delay === undefined) this.#awaited.clear(); // not stored here, or not reachable
      return;
    }
    this.#lookAgain.attempt += 1;
    this.#lookAgain.timer = setTimeout(() => {
      this.#lookAgain.timer = null;
      this.refresh();
    }, delay);
  }

  async #get(url) {
    const token = this.#getToken();
    let response;
    try {
      response = await fetch(url, {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        cache: "no-store",
      });
    } catch {
      return { ok: false, status: 0, body: null };
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: the status says enough
    }
    return { ok: response.ok && body !== null, status: response.status, body };
  }

  #showError(text) {
    this.#ui.error.hidden = !text;
    if (this.#ui.error.textContent !== text) this.#ui.error.textContent = text;
    this.#ui.retry.hidden = !text;
  }

  // --- The list ------------------------------------------------------------------------

  #render() {
    const list = this.#list;
    const now = Date.now();
    for (const callSid of this.#items.keys()) {
      if (!list.has(callSid)) this.#items.delete(callSid);
    }
    const items = list.calls.map((call) => {
      let item = this.#items.get(call.callSid);
      if (!item) {
        item = this.#item(call, now);
        this.#items.set(call.callSid, item);
      }
      return item;
    });
    // Move only what changed, so focus stays on the link it was on.
    const parent = this.#ui.calls;
    items.forEach((item, index) => {
      if (parent.children[index] !== item) parent.insertBefore(item, parent.children[index] ?? null);
    });
    while (parent.children.length > items.length) parent.lastElementChild.remove();
    this.#markOpen();
    this.#ui.more.hidden = !list.next;
    this.#ui.empty.hidden = items.length > 0 || !this.#ui.error.hidden;
    this.#ui.empty.textContent = !list.loaded
      ? "Loading…"
      : list.filter
        ? `No stored calls from ${list.filter}.`
        : "No stored calls yet. A call appears here when it ends.";
  }

  #item(call, now) {
    const shown = describeStored(call, now);
    const item = element("li");
    item.dataset.callSid = call.callSid;
    const link = element("a", "call");
    link.href = STORED_HASH + encodeURIComponent(call.callSid);
    link.append(element("span", "call-title", shown.title));
    if (shown.showSid) link.append(element("code", "call-sid", call.callSid));
    link.append(element("span", "call-when", `ended ${shown.ended} · ${shown.duration}`));
    if (shown.ending) link.append(element("span", "call-ending", shown.ending));
    item.append(link);
    return item;
  }

  #markOpen() {
    for (const [callSid, item] of this.#items) {
      const link = item.firstElementChild;
      if (callSid === this.#stored.callSid) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    }
  }

  // --- One stored call -----------------------------------------------------------------

  /** Show the stored transcript of `callSid` in the main pane (null: hide the pane). */
  async show(callSid) {
    if (callSid === this.#stored.callSid) return;
    const generation = ++this.#stored.generation;
    this.#stored.callSid = callSid;
    this.#markOpen();
    const ui = this.#ui;
    ui.pane.hidden = !callSid;
    ui.lines.replaceChildren();
    ui.parameters.replaceChildren();
    ui.downloadLinks.replaceChildren();
    ui.downloads.hidden = true;
    ui.truncated.hidden = true;
    ui.ended.hidden = true;
    ui.when.textContent = "";
    if (!callSid) return;
    const listed = this.#list.calls.find((call) => call.callSid === callSid);
    ui.title.textContent = listed ? callTitle(listed) : callSid;
    ui.sid.textContent = callSid;
    ui.sid.hidden = ui.title.textContent === callSid;
    this.#note("Loading the stored transcript…");
    const answer = await this.#get(transcriptUrl(this.#pageUrl, callSid, "json"));
    if (generation !== this.#stored.generation) return;
    if (!answer.ok) {
      this.#note(errorText(answer.status, answer.body, "call"), true);
      return;
    }
    this.#renderStored(answer.body);
  }

  #note(text, isError = false) {
    this.#ui.note.hidden = !text;
    this.#ui.note.textContent = text;
    this.#ui.note.classList.toggle("error", isError);
  }

  #renderStored(transcript) {
    const ui = this.#ui;
    const call = transcript.call;
    const shown = describeStored(call, Date.now());
    ui.title.textContent = shown.title;
    ui.sid.hidden = !shown.showSid;
    ui.when.textContent = `started ${clockTime(call.startedAt)} · ${shown.duration}`;
    for (const [name, value] of Object.entries(call.customParameters ?? {})) {
      ui.parameters.append(element("dt", "", name), element("dd", "", value));
    }
    for (const link of downloadLinks(this.#pageUrl, call.callSid, this.#getToken())) {
      const anchor = element("a", "", link.label);
      anchor.href = link.href;
      anchor.download = `${call.callSid}.${link.format}`;
      anchor.dataset.format = link.format;
      anchor.append(element("span", "format", ` .${link.format}`));
      const item = element("li");
      item.append(anchor);
      ui.downloadLinks.append(item);
    }
    ui.downloads.hidden = false;
    ui.truncated.hidden = !call.transcriptTruncated;
    const lines = storedLines(transcript);
    this.#note(lines.length ? "" : "Nobody spoke in this call.");
    ui.lines.replaceChildren(...lines.map((line) => this.#line(line, call)));
    ui.ended.hidden = false;
    const why = shown.ending ? `: ${shown.ending}` : "";
    if (shown.ending) ui.ended.dataset.ending = shown.ending;
    else delete ui.ended.dataset.ending;
    ui.ended.textContent = `Call ended at ${shown.ended} after ${shown.duration}${why}.`;
    ui.pane.querySelector(".scroller").scrollTop = 0;
  }

  #line(line, call) {
    const node = element("li", "line complete");
    node.dataset.key = line.key;
    node.dataset.channel = String(line.channel);
    const meta = element("div", "meta");
    const time = element("time", "at", formatOffset(line.start));
    if (call.startedAt) {
      const wall = new Date(call.startedAt + line.start * 1000);
      time.dateTime = wall.toISOString();
      time.title = wall.toLocaleTimeString();
    }
    meta.append(element("span", "speaker", line.speaker), time);
    const bubble = element("p", "bubble");
    bubble.append(element("span", "final", line.text));
    node.append(meta, bubble);
    return node;
  }
}
