// How a call is described: its title, speaker names, parameters, times. Pure: no DOM.

export const DEFAULT_SPEAKERS = Object.freeze(["Caller", "Callee"]);

// Custom parameters that name the speakers of a call rather than describe it.
const SPEAKER_PARAMETERS = Object.freeze(["CallerName", "CalleeName"]);

/**
 * The names of a call's channels: channel 0 is the caller (Twilio's inbound track), 1 the
 * callee (outbound). `CallerName` and `CalleeName` custom parameters override them.
 */
export function speakerNames(customParameters = {}) {
  return SPEAKER_PARAMETERS.map((name, channel) => {
    const value = customParameters[name];
    return typeof value === "string" && value.trim() ? value.trim() : DEFAULT_SPEAKERS[channel];
  });
}

/** A channel's name, for channels beyond the two a call has. */
export function speakerName(names, channel) {
  return names[channel] ?? `Channel ${channel}`;
}

/** A short title: "From → To" when the TwiML passed them, else the callSid. */
export function callTitle(call) {
  const parameters = call.customParameters ?? {};
  const from = parameters.From ?? parameters.from;
  const to = parameters.To ?? parameters.to;
  if (from && to) return `${from} → ${to}`;
  if (from) return `From ${from}`;
  if (to) return `To ${to}`;
  return call.callSid;
}

/** The custom parameters to list beside the title (all but those in it), as [name, value]. */
export function otherParameters(call) {
  const parameters = Object.entries(call.customParameters ?? {});
  if (callTitle(call) === call.callSid) return parameters;
  return parameters.filter(([name]) => !["From", "from", "To", "to"].includes(name));
}

/** "0:05", "12:34", "1:02:03" for a duration in milliseconds (negative counts as 0). */
export function formatDuration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
}

/** A time into the call (seconds), as a duration: "1:05". */
export function formatOffset(seconds) {
  return formatDuration(seconds * 1000);
}
