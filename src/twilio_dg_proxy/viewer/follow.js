// Following a phone number: where the page keeps it (the address), what it sends, which of
// the followed calls it shows, and how it describes the follow. Pure: no DOM, no I/O.
//
// The number lives in the query (`?follow=+15550100`), beside the hash that names the open
// pane (`#call/CA…`, `#stored/CA…`): the page follows the number whichever call is open, and
// a reload keeps both. The proxy decides what a number is and which calls have it (the
// viewer protocol's `follow`); the page sends what was typed and shows what it echoes. It
// applies the proxy's rule itself (phone_numbers.py) only to mark the calls with the number
// that it opened by their callSid (the proxy does not offer those again).

export const FOLLOW_PARAMETER = "follow";
// The custom parameters that hold a call's numbers (the proxy's NUMBER_PARAMETERS default).
export const NUMBER_PARAMETERS = Object.freeze(["From", "To"]);
const MIN_DIGITS = 3;
const MAX_DIGITS = 20;
const MIN_NATIONAL_DIGITS = 7;

/** The query of `url` as [name, value] pairs, values decoded without reading `+` as a space
 * (a number is written `?follow=+15550100`). A malformed escape is kept as written. */
function queryPairs(url) {
  const search = new URL(url).search.slice(1);
  if (!search) return [];
  return search.split("&").map((part) => {
    const at = part.indexOf("=");
    const [name, value] = at < 0 ? [part, ""] : [part.slice(0, at), part.slice(at + 1)];
    return [decoded(name), decoded(value)];
  });
}

function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** The number the page at `pageUrl` follows (`?follow=`, trimmed), or "" for none. */
export function followedInUrl(pageUrl) {
  const pair = queryPairs(pageUrl).find(([name]) => name === FOLLOW_PARAMETER);
  return pair ? pair[1].trim() : "";
}

/**
 * `pageUrl` following `number` ("": following none), as a string: the `follow` parameter
 * set (a `+` written as is, so the address reads as the number), the other parameters and
 * the hash kept.
 */
export function urlFollowing(pageUrl, number) {
  const url = new URL(pageUrl);
  const escape = (text) => encodeURIComponent(text).replace(/%2B/g, "+");
  const pairs = queryPairs(pageUrl).filter(([name]) => name !== FOLLOW_PARAMETER);
  if (number) pairs.push([FOLLOW_PARAMETER, number]);
  const query = pairs.map(([name, value]) => `${escape(name)}=${escape(value)}`).join("&");
  url.search = query ? `?${query}` : "";
  return String(url);
}

/** What to send for the text typed in the box: trimmed, runs of spaces made one ("" for
 * nothing typed). Whether it is a number is the proxy's to say. */
export function typedNumber(text) {
  return String(text ?? "").trim().replace(/\s+/g, " ");
}

/**
 * The number `text` spells, as the proxy reads it: `{digits, international}` (written with
 * a leading `+`), or null if it is not one. Spaces, tabs, `-`, `.`, `(` and `)` may stand
 * between the digits; 3 to 20 digits.
 */
export function parseNumber(text) {
  let body = String(text ?? "").trim();
  const international = body.startsWith("+");
  if (international) body = body.slice(1);
  if (!/^[\d \t.()-]*$/.test(body)) return null;
  const digits = body.replace(/\D/g, "");
  if (digits.length < MIN_DIGITS || digits.length > MAX_DIGITS) return null;
  return { digits, international };
}

/** Whether two parsed numbers are the same line: the same digits; or, one written without
 * `+`, its digits (leading zeros dropped, at least 7) ending the other's. */
export function sameNumber(a, b) {
  if (a.digits === b.digits) return true;
  if (a.international && b.international) return false;
  const significant = (n) => (n.international ? n.digits : n.digits.replace(/^0+/, ""));
  const [short, long] = [significant(a), significant(b)].sort((x, y) => x.length - y.length);
  return short.length >= MIN_NATIONAL_DIGITS && long.endsWith(short);
}

/** Whether one of the call's custom `parameters` holds the number written `number`. */
export function callHasNumber(call, number, parameters = NUMBER_PARAMETERS) {
  const wanted = parseNumber(number);
  if (!wanted) return false;
  const values = call?.customParameters ?? {};
  return parameters.some((name) => {
    const found = typeof values[name] === "string" ? parseNumber(values[name]) : null;
    return found !== null && sameNumber(found, wanted);
  });
}

/**
 * Whether a call the proxy subscribed the page to for the followed number (`call`, with
 * its `startedAt`) takes the main pane from what it shows. `shown` is the call shown,
 * `{startedAt, ended, followed}` (`followed`: one of the number's calls), or null;
 * `seenBefore` whether this call was offered before (a reconnect offers the active calls
 * again: none of them is opened again). The newest of the number's live calls is shown.
 */
export function opensFollowed(shown, call, seenBefore) {
  if (seenBefore) return false;
  if (!shown || shown.ended || !shown.followed) return true;
  return (Number(call.startedAt) || 0) >= (Number(shown.startedAt) || 0);
}

/**
 * How the follow stands, in a sentence: `connected` (the socket is open), `confirmed` (the
 * proxy answered `followed`), `shown` (the followed call in the main pane: `{ended}`, or
 * null), `others` (how many other live calls have the number).
 */
export function followDetail({ connected, confirmed, shown, others = 0 }) {
  if (!connected) return "Resumes once connected.";
  if (!confirmed) return "Asking the proxy…";
  const more = others > 1
    ? ` ${others} other calls with it are listed.`
    : others === 1 ? " 1 other call with it is listed." : "";
  if (!shown) return `Waiting for a call with this number.${more}`;
  if (shown.ended) return `Its call ended. The next one will open here.${more}`;
  return `Its call is open.${more}`;
}

/** The text of the proxy's `error` answer to a `follow`. */
export function followErrorText(message) {
  const reason = typeof message.reason === "string" && message.reason ? `: ${message.reason}` : "";
  return `Cannot follow “${message.number ?? ""}”${reason}.`;
}
