"""A call's history: its latest final results, kept compact for the viewers that join late.

Every active call keeps up to HISTORY_BYTES of them (32 KiB by default), which was a third
of what a live call held in memory (issue 15). So the newest messages are kept as they are,
and once they make up `seal_chars` they are sealed into a block: their text compressed
(zlib at its fastest level, with a preset dictionary of Deepgram's field names, so even
one block compresses 5-10×), decompressed only when a viewer asks for the history. Which
messages are kept, and the text replayed, are exactly as if each were kept verbatim.
No sockets, no clock.
"""

from __future__ import annotations

import zlib
from array import array

# Text (characters) kept verbatim before it is sealed into a compressed block: compressing
# 8 KiB at once costs about a third less CPU per byte than 4 KiB, and compresses better.
SEAL_CHARS = 8 << 10
_LEVEL = 1  # the fastest: ~200-400 MB/s here, a final costing ~2-4 us to compress
# zlib's preset dictionary: what every Deepgram message repeats (field names, both with
# and without json.dumps' spaces). Only for compressing blocks: never on the wire.
_ZDICT = (
    b'{"type":"UtteranceEnd","channel":[0,1],"last_word_end":'
    b'{"type":"Results","channel_index":[0,1],"duration":,"start":,"is_final":true,'
    b'"speech_final":false,"from_finalize":false,"channel":{"alternatives":[{"transcript":"",'
    b'"confidence":0.,"words":[{"word":"","start":,"end":,"confidence":0.,'
    b'"punctuated_word":"","speaker":,"language":"en"}]}]},"metadata":{"request_id":"",'
    b'"model_info":{"name":"","version":"","arch":""},"model_uuid":""}}'
    b'{"type": "Results", "channel_index": [0, 2], "duration": 0.25, "start": 0.0, '
    b'"is_final": true, "speech_final": false, "from_finalize": false, "channel": '
    b'{"alternatives": [{"transcript": "", "confidence": 0.99, "words": [{"word": "", '
    b'"start": 0.0, "end": 0.0, "confidence": 0.99, "punctuated_word": ""}, {"word": "", '
    b'"start": 0.0, "end": 0.0, "confidence": 0.99, "punctuated_word": ""}]}]}, '
    b'"metadata": {"request_id": "", "model_info": {"name": "", "version": "", "arch": ""}, '
    b'"model_uuid": ""}}'
)
# Any str survives the round trip, lone surrogates included.
_ENCODING, _ERRORS = "utf-8", "surrogatepass"


class _Block:
    """Messages sealed together: their text, compressed, and each one's length."""

    __slots__ = ("data", "lengths")

    def __init__(self, texts: list[str]) -> None:
        compressor = zlib.compressobj(_LEVEL, zdict=_ZDICT)
        raw = "".join(texts).encode(_ENCODING, _ERRORS)
        self.data = compressor.compress(raw) + compressor.flush()
        self.lengths = array("I", map(len, texts))

    def texts(self, skip: int) -> list[str]:
        """The messages, but the first `skip`."""
        decompressor = zlib.decompressobj(zdict=_ZDICT)
        text = (decompressor.decompress(self.data) + decompressor.flush()).decode(
            _ENCODING, _ERRORS
        )
        out, at = [], 0
        for index, length in enumerate(self.lengths):
            if index >= skip:
                out.append(text[at : at + length])
            at += length
        return out


class History:
    """A call's final results, replayed to viewers that join late: the latest ones within
    `max_messages` and `max_bytes` (of text); older ones are dropped, and `truncated` says so.
    The newest are kept verbatim until they make up `seal_chars`, the others compressed."""

    __slots__ = (
        "_blocks",
        "_count",
        "_seal_chars",
        "_skip",
        "_tail",
        "_tail_size",
        "max_bytes",
        "max_messages",
        "size",
        "truncated",
    )

    def __init__(self, max_messages: int, max_bytes: int, seal_chars: int = SEAL_CHARS) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.size = 0  # characters held (Deepgram's JSON is ASCII: bytes)
        self.truncated = False
        self._seal_chars = seal_chars
        self._blocks: list[_Block] = []  # sealed, oldest first (a few: no deque needed)
        self._skip = 0  # messages of the oldest block already dropped
        self._tail: list[str] = []  # the newest messages, verbatim
        self._tail_size = 0
        self._count = 0  # messages held

    @property
    def messages(self) -> list[str]:
        """The messages held, oldest first."""
        out: list[str] = []
        skip = self._skip
        for block in self._blocks:
            out += block.texts(skip)
            skip = 0
        return out + self._tail

    def add(self, text: str) -> None:
        """Keep `text`, dropping the oldest messages beyond the limits (and `text` itself if
        it alone is over `max_bytes`)."""
        self._tail.append(text)
        self._tail_size += len(text)
        self.size += len(text)
        self._count += 1
        while self._count and (self.size > self.max_bytes or self._count > self.max_messages):
            self._drop_oldest()
            self.truncated = True
        if self._tail_size >= self._seal_chars:
            self._blocks.append(_Block(self._tail))
            self._tail = []
            self._tail_size = 0

    def _drop_oldest(self) -> None:
        self._count -= 1
        blocks = self._blocks
        if not blocks:
            dropped = len(self._tail.pop(0))
            self._tail_size -= dropped
            self.size -= dropped
            return
        lengths = blocks[0].lengths
        self.size -= lengths[self._skip]
        self._skip += 1
        if self._skip == len(lengths):
            del blocks[0]
            self._skip = 0
