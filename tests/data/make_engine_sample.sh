#!/usr/bin/env bash
# Regenerates engine_sample.wav from engine_sample.txt with espeak-ng and sox (Debian packages
# espeak-ng and sox): a two-speaker phone call as Twilio would deliver it, 8 kHz mu-law stereo,
# caller (Twilio's inbound track) on the left = channel 0, callee on the right = channel 1.
# The turns follow each other with GAP seconds of silence, as in a call with no overlap.
# Run once; the WAV is committed so that the tests need neither tool.
set -euo pipefail
cd "$(dirname "$0")"
LEAD=0.5   # seconds of silence before the first turn
GAP=0.7    # seconds between the end of one turn and the start of the next
TAIL=0.8   # seconds of silence after the last turn
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

silence() { sox -n -r 8000 -c 1 -b 16 "$2" trim 0 "$1"; }

left=("$work/l0.wav") right=("$work/r0.wav")
silence "$LEAD" "$work/l0.wav"
silence "$LEAD" "$work/r0.wav"
n=0
while IFS='|' read -r channel voice text; do
  [[ -z "$channel" || "$channel" == \#* ]] && continue
  n=$((n + 1))
  espeak-ng -v "$voice" -s 150 -w "$work/raw$n.wav" "$text"
  # espeak-ng ends with silence of its own: trim it so that GAP is the real pause.
  sox "$work/raw$n.wav" -r 8000 -c 1 -b 16 "$work/t$n.wav" \
    reverse silence 1 0.01 0.1% reverse pad 0 "$GAP"
  silence "$(soxi -D "$work/t$n.wav")" "$work/s$n.wav"
  if [[ "$channel" == 0 ]]; then
    left+=("$work/t$n.wav") right+=("$work/s$n.wav")
  else
    left+=("$work/s$n.wav") right+=("$work/t$n.wav")
  fi
done < engine_sample.txt
silence "$TAIL" "$work/tail.wav"
left+=("$work/tail.wav") right+=("$work/tail.wav")
sox "${left[@]}" "$work/left.wav"
sox "${right[@]}" "$work/right.wav"
sox -M "$work/left.wav" "$work/right.wav" -e mu-law -b 8 engine_sample.wav
soxi engine_sample.wav
