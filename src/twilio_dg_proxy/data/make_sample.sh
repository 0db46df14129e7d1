#!/usr/bin/env bash
# Regenerate sample_call.wav, the demo's bundled phone call, from sample_call.txt.
#
#   apt-get install -y espeak-ng sox      # Debian/Ubuntu packages; nothing else is needed
#   bash src/twilio_dg_proxy/data/make_sample.sh [OUT.wav]
#
# The script is one turn per line, "caller: ..." or "callee: ...". The call is a stereo WAV,
# 8 kHz 16-bit PCM (what a phone line carries; pydub reads it without ffmpeg): the caller on
# the left channel (Twilio's inbound track, Deepgram channel 0), the callee on the right
# (outbound, channel 1). While one speaks the other channel is silent, as on a real call, with
# a short pause between turns.
#
# Voices, speed and sentences were chosen so that Whisper tiny.en transcribes them well
# (measured: 4 % word error rate over both channels through 8 kHz mu-law, all of it "eight"
# written "8" and an added "o'clock"): American English, 150 words a minute, a distinct voice
# per speaker; numbers said inside a sentence fared worst with espeak's male voices. To try
# others without touching the committed file, e.g.:
#
#   CALLER_VOICE=en-us+m1 CALLEE_VOICE=en-us+f3 WORDS_PER_MINUTE=160 \
#     SCRIPT=my_call.txt bash src/twilio_dg_proxy/data/make_sample.sh /tmp/try.wav
#
# The output is byte-for-byte reproducible for a given espeak-ng and SoX (made with espeak-ng
# 1.51 and SoX 14.4.2; dithering is off).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
script=${SCRIPT:-$here/sample_call.txt}
out=${1:-$here/sample_call.wav}

CALLER_VOICE=${CALLER_VOICE:-en-us+m3}
CALLEE_VOICE=${CALLEE_VOICE:-en-us+f2}
WORDS_PER_MINUTE=${WORDS_PER_MINUTE:-150}
RATE=8000
LEAD_IN=0.3   # seconds of silence before the first turn
PAUSE=0.3     # seconds between turns
TAIL=0.4      # seconds of silence after the last turn

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# -D: no dither (reproducible); -V1: errors only.
sox_() { sox -D -V1 "$@"; }
# Format options before -n describe the null input, so `trim` counts samples at $RATE.
silence() { sox_ -r "$RATE" -c 1 -b 16 -n "$2" trim 0 "$1"; }

silence "$LEAD_IN" "$work/lead.wav"
silence "$PAUSE" "$work/pause.wav"
silence "$TAIL" "$work/tail.wav"
left=("$work/lead.wav")
right=("$work/lead.wav")

n=0
while IFS= read -r line || [ -n "$line" ]; do
  [ -n "$line" ] || continue
  speaker=${line%%:*}
  text=${line#*: }
  case $speaker in
    caller) voice=$CALLER_VOICE ;;
    callee) voice=$CALLEE_VOICE ;;
    *) echo "make_sample.sh: line $((n + 1)): expected 'caller: ' or 'callee: '" >&2; exit 1 ;;
  esac
  n=$((n + 1))
  turn="$work/turn$n.wav"
  espeak-ng -v "$voice" -s "$WORDS_PER_MINUTE" -w "$work/raw$n.wav" "$text"
  # SoX's rate effect low-pass filters before resampling (no aliasing); gain -n peaks at -1 dB.
  sox_ "$work/raw$n.wav" -r "$RATE" -c 1 -b 16 "$turn" gain -n -1 rate -v "$RATE"
  # The other channel stays silent for exactly as long as this turn.
  silence "$(soxi -s "$turn")s" "$work/quiet$n.wav"
  if [ "$speaker" = caller ]; then
    left+=("$turn" "$work/pause.wav"); right+=("$work/quiet$n.wav" "$work/pause.wav")
  else
    left+=("$work/quiet$n.wav" "$work/pause.wav"); right+=("$turn" "$work/pause.wav")
  fi
done < "$script"

left+=("$work/tail.wav")
right+=("$work/tail.wav")
sox_ "${left[@]}" "$work/left.wav"
sox_ "${right[@]}" "$work/right.wav"
sox_ -M "$work/left.wav" "$work/right.wav" -b 16 "$out"
echo "wrote $out: $(soxi -D "$out") s, $(soxi -c "$out") channels, $(soxi -r "$out") Hz"
