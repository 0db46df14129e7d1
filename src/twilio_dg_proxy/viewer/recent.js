// Stored calls: the /calls API's URLs, the recent-calls list's order and pages, how a stored
// call and its transcript are described. Pure: no DOM, no clock, no I/O.
//
// The API lists calls newest first by end time, then callSid, and pages on the last call
// listed (a cursor, `next`), so a page fetched again later overlaps the pages loaded before
// unless more than a page of calls ended meanwhile.

import { callTitle, formatDuration } from "./calls.js";

export const PAGE_SIZE = 20;
// The transcript formats offered for download, in the order shown.
export const DOWNLOAD_FORMATS = Object.freeze([
  Object.freeze({ format: "txt", label: "Text" }),
  Object.freeze({ format: "vtt", label: "WebVTT" }),
  Object.freeze({ format: "srt", label: "SubRip" }),
  Object.freeze({ format: "json", label: "JSON" }),
]);
const NORMAL_CLOSURE = 1000;

function apiUrl(path, pageUrl) {
  const url = new URL(path, pageUrl);
  url.search = "";
  url.hash = "";
  return url;
}

/**
 * The URL of one page of stored calls, relative to the page (works under a prefix): at most
 * `limit`, after the cursor `before`, only those whose `From` parameter is `from`.
 */
export function callsUrl(pageUrl, { limit = PAGE_SIZE, before = null, from = "" } = {}) {
  const url = apiUrl("calls", pageUrl);
  url.searchParams.set("limit", String(limit));
  if (before) url.searchParams.set("before", before);
  if (from) url.searchParams.set("From", from);
  return url;
}

/**
 * The URL of a stored call's transcript in `format`. A download link (`download`) cannot
 * send an Authorization header, so it carries the `token`, if there is one, in its query.
 */
export function transcriptUrl(pageUrl, callSid, format = "json", { download = false, token = "" } = {}) {
  const url = apiUrl(`calls/${encodeURIComponent(callSid)}/transcript`, pageUrl);
  url.searchParams.set("format", format);
  if (download) url.searchParams.set("download", "1");
  if (download && token) url.searchParams.set("token", token);
  return url;
}

/** The download links of a stored call: `[{format, label, href}]`, href a URL string. */
export function downloadLinks(pageUrl, callSid, token = "") {
  return DOWNLOAD_FORMATS.map(({ format, label }) => ({
    format,
    label,
    href: String(transcriptUrl(pageUrl, callSid, format, { download: true, token })),
  }));
}

/**
 * What the filter box asks for: the text trimmed, and for a phone number written with
 * spaces, dashes, dots or brackets ("+1 (555) 010-0"), the number alone, as Twilio's `From`
 * has it. Anything else (a SIP address, `client:alice`) is kept as typed.
 */
export function normalizeNumber(text) {
  const trimmed = String(text ?? "").trim();
  return /^\+?[\d\s().-]+$/.test(trimmed) ? trimmed.replace(/[\s().-]/g, "") : trimmed;
}

/** Whether `a` is listed before `b`: it ended later, or at the same time with a greater callSid. */
export function newerFirst(a, b) {
  if (a.endedAt !== b.endedAt) return b.endedAt - a.endedAt;
  return a.callSid < b.callSid ? 1 : a.callSid > b.callSid ? -1 : 0;
}

/**
 * The recent-calls list: the stored calls loaded so far, newest first, each once, and the
 * cursor of the next (older) page, `null` once the oldest is loaded. `filter` is the `From`
 * the list is limited to ("" for every call).
 */
export class RecentList {
  constructor(filter = "") {
    this.filter = filter;
    this.calls = [];
    this.next = null;
    this.loaded = false; // whether a first page came
  }

  /** Take a first page fetched again: calls that ended since join the top, older pages
   * already loaded stay. When it does not reach them (a gap), the list is that page alone. */
  refreshed(page) {
    const calls = page.calls ?? [];
    const next = page.next ?? null;
    const newest = this.calls[0];
    const oldest = calls[calls.length - 1];
    const gap = next !== null && newest !== undefined && oldest !== undefined && newerFirst(oldest, newest) < 0;
    if (!this.loaded || next === null || gap) {
      this.calls = [...calls];
      this.next = next;
    } else {
      this.calls = merged(this.calls, calls);
    }
    this.loaded = true;
  }

  /** Take the page that follows the last one loaded ("More"). */
  appended(page) {
    this.calls = merged(this.calls, page.calls ?? []);
    this.next = page.next ?? null;
    this.loaded = true;
  }

  /** Whether the list shows `callSid`. */
  has(callSid) {
    return this.calls.some((call) => call.callSid === callSid);
  }

  /** Whether a call that just ended belongs in this list once stored (it passes the filter). */
  expects(call) {
    return !this.filter || (call.customParameters ?? {}).From === this.filter;
  }
}

function merged(calls, more) {
  const bySid = new Map(calls.map((call) => [call.callSid, call]));
  for (const call of more) bySid.set(call.callSid, call); // the newer copy wins
  return [...bySid.values()].sort(newerFirst);
}

/** How a call ended, when not normally: "Deepgram failed (1014)"; `null` for a normal end. */
export function endingText(call) {
  if (call.endCode === undefined || call.endCode === null || call.endCode === NORMAL_CLOSURE) return null;
  return call.endReason ? `${call.endReason} (${call.endCode})` : `code ${call.endCode}`;
}

/** When a call ended: its time of day if on the same day as `now`, else its date and time. */
export function formatEnded(endedAt, now) {
  const ended = new Date(endedAt);
  return ended.toDateString() === new Date(now).toDateString()
    ? ended.toLocaleTimeString()
    : ended.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/**
 * One stored call (an item of `GET /calls`) as the list shows it: `{callSid, title, showSid,
 * ended, duration, ending}` (`ending` null when it ended normally).
 */
export function describeStored(call, now) {
  const title = callTitle(call);
  const durationMs = Number.isFinite(call.durationMs) ? call.durationMs : call.endedAt - call.startedAt;
  return {
    callSid: call.callSid,
    title,
    showSid: title !== call.callSid,
    ended: formatEnded(call.endedAt, now),
    duration: formatDuration(durationMs),
    ending: endingText(call),
  };
}

/**
 * The lines of a stored transcript (`GET /calls/{callSid}/transcript?format=json`): one per
 * segment, in its order, `{key, channel, speaker, start, text}`.
 */
export function storedLines(transcript) {
  return (transcript.segments ?? []).map((segment, index) => ({
    key: `${segment.channel}@${Number(segment.start).toFixed(3)}#${index}`,
    channel: segment.channel,
    speaker: segment.speaker,
    start: Number(segment.start),
    text: segment.text,
  }));
}

/**
 * What to tell the user when the API answered `status` (0: no answer) with `body` (its
 * JSON, or null); `what` is "list" for the call list, "call" for one call's transcript.
 */
export function errorText(status, body, what = "list") {
  const detail = typeof body?.error === "string" ? body.error : "";
  switch (status) {
    case 0:
      return "The proxy could not be reached.";
    case 400:
      return `The proxy refused the request${detail ? `: ${detail}` : ""}.`;
    case 401:
      return "A viewer token is required: the proxy refused this one, or none was given.";
    case 404:
      return what === "call"
        ? "This call is not stored: it never was, or it was purged (RETENTION_DAYS)."
        : "Transcripts are not stored on this proxy (STORE_TRANSCRIPTS=false).";
    case 503:
      return "The transcript store is unavailable right now. Try again shortly.";
    default:
      return `The proxy answered ${status}${detail ? `: ${detail}` : ""}.`;
  }
}
