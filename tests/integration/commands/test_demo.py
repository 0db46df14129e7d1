"""`python -m twilio_dg_proxy demo` end to end: the real offline engine, the proxy, the bundled
sample call and a /client subscriber, in a subprocess, on loopback (the hidden --fast option
streams the call without real-time pacing)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from twilio_dg_proxy import audio

from ...timing import S

SCRIPT = (Path(audio.__file__).parent / "data" / "sample_call.txt").read_text().splitlines()

# Words each speaker says in the sample (data/sample_call.txt), which the engine must put on
# that speaker's lines, and never on the other's.
CALLER_WORDS = ("table", "dinner", "evening", "miller", "goodbye")
CALLEE_WORDS = ("how many", "your name", "see you tomorrow")


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words: substitutions, insertions and deletions."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref != hyp))
    return row[-1]


@pytest.mark.timeout(300 * S)
async def test_the_demo_transcribes_the_sample_call_with_caller_and_callee_labels() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twilio_dg_proxy",
        "demo",
        "--fast",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ,
    )
    async with asyncio.timeout(240 * S):
        raw_out, raw_err = await process.communicate()
    out, err = raw_out.decode(), raw_err.decode()
    assert process.returncode == 0, out + err
    assert "\x1b[" not in out  # not a terminal: plain lines, finals only
    said = {"Caller": "", "Callee": ""}
    for line in out.splitlines():
        speaker, _, text = line.partition(": ")
        if speaker in said:
            said[speaker] += " " + text.lower()
    for word in CALLER_WORDS:
        assert word in said["Caller"] and word not in said["Callee"], (word, said)
    for word in CALLEE_WORDS:
        assert word in said["Callee"] and word not in said["Caller"], (word, said)
    # Word error rate over both speakers. Measured at 7.5 % (4 errors in 53 words: "eight"
    # written "8", an added "o'clock", "thanks" heard as "and"); the bound leaves room for
    # other CPUs' arithmetic without letting a broken path pass.
    errors = total = 0
    for speaker, label in (("caller", "Caller"), ("callee", "Callee")):
        reference = words(" ".join(t.split(": ", 1)[1] for t in SCRIPT if t.startswith(speaker)))
        errors += word_errors(reference, words(said[label]))
        total += len(reference)
    assert errors / total <= 0.2, (errors, total, said)
    assert "websocat -E 'ws://127.0.0.1:PORT/client?history=1'" in out
    assert "Traceback" not in err
