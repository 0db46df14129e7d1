// A call's conversation, built from Deepgram's live messages. Pure: no DOM, no clock, no I/O.
//
// Deepgram (multichannel) sends, per channel, interim results (is_final: false) that later
// ones replace, and final results that each cover the audio since the previous final. An
// utterance is the finals of one channel up to one with speech_final: true, or up to an
// UtteranceEnd for that channel. Finals are keyed by channel and start time, so applying a
// message twice (a history replayed after a reconnect) changes nothing.

const EPSILON = 1e-6;

/** The key of a result: its channel and its start time (ms precision, as Deepgram's). */
export function resultKey(channel, start) {
  return `${channel}@${start.toFixed(3)}`;
}

function readResult(message) {
  const index = message.channel_index;
  const channel = Array.isArray(index) && Number.isInteger(index[0]) ? index[0] : 0;
  const start = Number(message.start);
  const duration = Number(message.duration);
  if (!Number.isFinite(start)) return null;
  const alternative = message.channel?.alternatives?.[0];
  const text = typeof alternative?.transcript === "string" ? alternative.transcript.trim() : "";
  const end = start + (Number.isFinite(duration) ? Math.max(0, duration) : 0);
  // A result covers the audio since the previous final, silence included: when the words
  // carry times, the first one says when the speaking began.
  const firstWord = Number(alternative?.words?.[0]?.start);
  const spoken = Number.isFinite(firstWord) && firstWord >= start ? firstWord : start;
  return { channel, start, end, text, spoken };
}

/**
 * One call's transcript. Feed it Deepgram messages with `apply`; read `lines()`.
 *
 * A line is one utterance of one channel: `{key, channel, start, end, text, pending,
 * complete}`, where `text` is its final words, `pending` the words of the latest interim
 * result still to be confirmed (provisional), and `complete` whether the utterance ended.
 * `key` stays the same while the utterance grows, so a view can update the line in place.
 */
export class Transcript {
  constructor() {
    this.finals = new Map(); // resultKey → {channel, start, end, text, speechFinal}
    this.interims = new Map(); // channel → {channel, start, end, text}
    this.breaks = new Map(); // resultKey → {channel, time}: UtteranceEnd messages
    this.finalEnd = new Map(); // channel → end of its latest final
    this.ended = false;
  }

  /** Apply one Deepgram message (an object); returns whether the lines changed. */
  apply(message) {
    if (message === null || typeof message !== "object") return false;
    if (message.type === "Results") return this.#applyResult(message);
    if (message.type === "UtteranceEnd") return this.#applyUtteranceEnd(message);
    return false; // Metadata, SpeechStarted, ...: nothing to show
  }

  /** Apply messages in order; returns whether the lines changed. */
  applyAll(messages) {
    let changed = false;
    for (const message of messages) changed = this.apply(message) || changed;
    return changed;
  }

  /** Forget provisional text (a reconnect: the next interim results will say it again). */
  clearInterims() {
    const had = this.interims.size > 0;
    this.interims.clear();
    return had;
  }

  /** The call ended: nothing is provisional any more. */
  end() {
    this.ended = true;
    this.interims.clear();
  }

  #applyResult(message) {
    const result = readResult(message);
    if (result === null) return false;
    const { channel, start, end, text, spoken } = result;
    if (message.is_final === true) {
      const key = resultKey(channel, start);
      if (this.finals.has(key)) return false; // seen already (history replayed)
      this.finals.set(key, {
        channel,
        start,
        end,
        text,
        spoken,
        speechFinal: message.speech_final === true,
      });
      this.finalEnd.set(channel, Math.max(this.finalEnd.get(channel) ?? 0, end));
      const interim = this.interims.get(channel);
      const covered = interim !== undefined && interim.start < end - EPSILON;
      if (covered) this.interims.delete(channel);
      return text !== "" || message.speech_final === true || covered;
    }
    if (this.ended) return false;
    if (start < (this.finalEnd.get(channel) ?? 0) - EPSILON) return false; // already final
    const previous = this.interims.get(channel);
    if (text === "") {
      this.interims.delete(channel);
      return previous !== undefined;
    }
    if (previous && previous.text === text && previous.start === start) return false;
    this.interims.set(channel, { channel, start, end, text, spoken });
    return true;
  }

  #applyUtteranceEnd(message) {
    const time = Number(message.last_word_end);
    if (!Number.isFinite(time)) return false;
    const channel = Array.isArray(message.channel) && Number.isInteger(message.channel[0])
      ? message.channel[0]
      : 0;
    const key = resultKey(channel, time);
    if (this.breaks.has(key)) return false;
    this.breaks.set(key, { channel, time });
    return true;
  }

  /** The conversation so far: one line per utterance, in order of start time. */
  lines() {
    const channels = new Set([...this.interims.keys()]);
    for (const final of this.finals.values()) channels.add(final.channel);
    const lines = [];
    for (const channel of channels) lines.push(...this.#channelLines(channel));
    return lines.sort((a, b) => a.spoken - b.spoken || a.channel - b.channel);
  }

  #channelLines(channel) {
    const finals = [...this.finals.values()]
      .filter((final) => final.channel === channel)
      .sort((a, b) => a.start - b.start);
    const breaks = [...this.breaks.values()]
      .filter((mark) => mark.channel === channel)
      .map((mark) => mark.time);
    const lines = [];
    let current = null;
    const close = () => {
      if (current) {
        current.complete = true;
        lines.push(current);
        current = null;
      }
    };
    // An UtteranceEnd at `time` ends the utterance whose last words end there.
    const brokenBefore = (start) =>
      breaks.some((time) => time > current.lastStart - EPSILON && time <= start + EPSILON);
    for (const final of finals) {
      if (current && brokenBefore(final.start)) close();
      if (final.text) {
        if (current) {
          current.text += " " + final.text;
          current.end = final.end;
        } else {
          current = this.#line(channel, final.start, final.end, final.text, final.spoken);
        }
        current.lastStart = final.start;
      }
      if (final.speechFinal) close();
    }
    if (current && brokenBefore(Infinity)) close();
    const interim = this.interims.get(channel);
    if (interim) {
      if (!current) current = this.#line(channel, interim.start, interim.end, "", interim.spoken);
      current.pending = interim.text;
      current.end = Math.max(current.end, interim.end);
    }
    if (current) {
      current.complete = this.ended;
      lines.push(current);
    }
    return lines.map(({ lastStart, ...line }) => line);
  }

  #line(channel, start, end, text, spoken) {
    return {
      key: resultKey(channel, start),
      channel,
      start,
      spoken, // when the first word was said (the line's time)
      end,
      text,
      pending: "",
      complete: false,
      lastStart: start,
    };
  }
}
