"""How deep a JSON document nests, measured as its bytes stream past, without building it.

Triton's HTTP front end parses a request's JSON with a recursive parser (rapidjson, through
``TritonJson``): a body of 400 KB nested 200,000 deep (``{"inputs": [[[[...]]]]}``) overflowed its stack and
killed tritonserver with SIGSEGV (issue 30). No real request nests deeper than a handful of levels (the
document, ``inputs``, an input, its ``data``, one level per dimension of a nested tensor), so the front
refuses a body whose JSON nests deeper than :data:`genserve.config.MAX_JSON_DEPTH` before Triton sees all of
it (:mod:`genserve.front.http_proxy`).

:class:`JsonDepth` is fed the body in chunks and keeps four numbers between them (the depth, whether it is
inside a string, and the run of backslashes it ended on); each chunk is scanned with numpy, so a 132 MiB
body costs well under a second of the front's time, and nothing is parsed or kept. It counts ``[`` and
``{`` outside strings, whose quotes it tells from escaped ones by the parity of the backslashes before them.
On a document that is not valid JSON the count may be off after the first error, but a parser stops there
too, so it never recurses deeper than what was counted before it.
"""

from __future__ import annotations

import numpy as np

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
# The bytes that matter (quotes, backslashes, brackets), and what each bracket does to the depth.
_MARKS = np.zeros(256, dtype=bool)
_MARKS[[_QUOTE, _BACKSLASH, *b"[]{}"]] = True
_STEPS = np.zeros(256, dtype=np.int8)
_STEPS[list(b"[{")] = 1
_STEPS[list(b"]}")] = -1
# Chunks are scanned in pieces of at most this many bytes (numpy's temporaries are a few times as large).
_PIECE = 1 << 20


class TooDeep(ValueError):
    """The document nests deeper than the limit."""


class JsonDepth:
    """Feed a JSON document's bytes in order (:meth:`feed`); raises :class:`TooDeep` as soon as they nest
    deeper than ``limit``. :attr:`deepest` is the deepest nesting seen."""

    def __init__(self, limit: int):
        self.limit = limit
        self.depth = 0
        self.deepest = 0
        self._in_string = False
        self._backslashes = 0  # the run of backslashes the bytes fed so far end with

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), _PIECE):
            self._scan(np.frombuffer(view[start : start + _PIECE], dtype=np.uint8))
        if self.deepest > self.limit:
            raise TooDeep(f"the request's JSON nests {self.deepest} levels deep; at most {self.limit} are accepted")

    def _scan(self, data: np.ndarray) -> None:
        """One piece: only its quotes, backslashes and brackets are looked at (``marks``, where they are)."""
        where = np.flatnonzero(_MARKS[data])
        if not where.size:  # nothing but values and spaces: a run of backslashes ends here
            self._backslashes = 0 if data.size else self._backslashes
            return
        marks = data[where]
        backslash = marks == _BACKSLASH
        if backslash.any() or self._backslashes:
            # The run of backslashes each mark ends (0 for others), counted over marks next to each other.
            follows = np.zeros(where.size, dtype=bool)
            follows[1:] = (where[1:] == where[:-1] + 1) & backslash[:-1]
            follows[0] = where[0] == 0 and self._backslashes > 0
            starts = np.where(backslash & ~follows, np.arange(where.size), -1)
            first = np.maximum.accumulate(starts)
            runs = np.where(backslash, np.arange(where.size) - first + 1, 0)
            if self._backslashes:  # a run carried over from the last piece, where the marks start with it
                carried = backslash & (first == -1) if where[0] == 0 else np.zeros(where.size, dtype=bool)
                runs = np.where(carried, np.arange(where.size) + 1 + self._backslashes, runs)
            before = np.zeros(where.size, dtype=np.int64)
            before[1:] = np.where(where[1:] == where[:-1] + 1, runs[:-1], 0)
            before[0] = self._backslashes if where[0] == 0 else 0
            quotes = (marks == _QUOTE) & (before % 2 == 0)
            last_run = int(runs[-1]) if where[-1] == data.size - 1 else 0
        else:
            quotes = marks == _QUOTE
            last_run = 0
        inside = (np.cumsum(quotes, dtype=np.int64) + self._in_string) % 2 == 1
        steps = _STEPS[marks]
        steps[inside] = 0
        depths = np.cumsum(steps, dtype=np.int64) + self.depth
        self.deepest = max(self.deepest, int(depths.max()))
        self.depth = int(depths[-1])
        self._in_string = bool(inside[-1])
        self._backslashes = last_run


def json_depth(document: bytes, limit: int = 1 << 62) -> int:
    """The deepest nesting of a whole document (tests, the probe)."""
    scan = JsonDepth(limit)
    scan.feed(document)
    return scan.deepest
