"""Check a text edit with OCR: which text an instruction asks for, and how far the OCR reading is from it.

For the visual text editing task (vttie) and its batch runner:

>>> extract_text_edit('change "OPEN" to "CLOSED"')
TextEdit(old='OPEN', new='CLOSED')
>>> extract_text_edit("把“开”改成“关”")
TextEdit(old='开', new='关')
>>> normalized_edit_distance("CL0SED", "CLOSED")
0.16666666666666666

:func:`normalized_edit_distance` is the Levenshtein distance divided by the longer text's length (0:
identical, 1: nothing in common), computed by rapidfuzz on texts normalized by :func:`normalize_text`.
An edited image holds other text too, so a report measures the new text against the closest stretch of
the OCR text instead (:func:`substring_edit_distance`, normalized by the new text's length).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

# Quote pairs, opening -> closing. ASCII quotes are handled apart (same character both ends).
_PAIRED_QUOTES = {"“": "”", "‘": "’", "「": "」", "『": "』", "《": "》", "«": "»", "„": "“", "〝": "〞", "＂": "＂"}
_QUOTED = re.compile(
    "|".join(
        [
            r'"(?P<dq>[^"]+)"',
            # A single quote opens and closes only outside words, so 'don't' is one quoted text.
            r"(?<![\w'])'(?P<sq>(?:[^'\n]|'(?=\w))+?)'(?!\w)",
            *(
                f"{re.escape(o)}(?P<p{i}>[^{re.escape(c)}]+){re.escape(c)}"
                for i, (o, c) in enumerate(_PAIRED_QUOTES.items())
            ),
        ]
    )
)

# What stands between the old and the new text ("change A to B", "replace A with B", 把A改成B)...
_FORWARD = re.compile(
    r"\b(?:to|into|with|by|as|reads?|says?)\b|->|→|=>|:|："
    r"|改成|改为|改為|换成|換成|替换成|替換成|替换为|替換為|变成|變成|变为|變為|写成|寫成|成|为|為|到",
    re.IGNORECASE,
)
# ... or, the new text first ("use B instead of A", 用B替换A).
_BACKWARD = re.compile(r"\binstead\s+of\b|\bin\s+place\s+of\b|(?:替换|替換)(?![成为為])|代替|取代", re.IGNORECASE)
_BACKWARD_LEAD = re.compile(r"(?:\buse|\bput|\bwrite|用|以)\s*$", re.IGNORECASE)
# Right before a lone quoted text that is the new text ("make it say 'SALE'", 改成“关”).
_NEW_ONLY_LEAD = re.compile(
    r"(?:\b(?:to|into|with|say|says|read|reads|write|display|displays|show|shows|add|as)|"
    r"改成|改为|改為|换成|換成|替换为|替換為|变成|變成|写上|寫上|写成|寫成|显示|顯示|加上|添加|成|为|為)\s*[:：]?\s*$",
    re.IGNORECASE,
)
# The words between two quoted texts that are an edit pair stay few.
_MAX_BETWEEN = 40


@dataclass(frozen=True)
class TextEdit:
    """The text an instruction replaces (``old``; None when it names none) and the text it asks for."""

    old: str | None
    new: str


def quoted_spans(instruction: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of each quoted text in the instruction, in order, in any of the usual quoting
    styles: "…", '…', “…”, ‘…’, 「…」, 『…』, 《…》, «…»."""
    spans = []
    for match in _QUOTED.finditer(instruction):
        text = next(group for group in match.groups() if group is not None)
        spans.append((match.start(), match.end(), text))
    return spans


def extract_text_edit(instruction: str) -> TextEdit | None:
    """The old and new text an editing instruction names, or None when it names no new text.

    Understood: ``change "OPEN" to "CLOSED"``, ``replace 'A' with 'B'``, ``"A" -> "B"``,
    ``use "B" instead of "A"``, ``make the sign say "SALE"`` (new text only), and in Chinese
    ``把“开”改成“关”``, ``将「開」改為「關」``, ``用“关”替换“开”``, ``改成“关”``.
    """
    spans = quoted_spans(instruction)
    for (start_a, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        between = instruction[end_a:start_b]
        if len(between) > _MAX_BETWEEN:
            continue
        if _BACKWARD.search(between):
            return TextEdit(old=b, new=a)  # use "B" instead of "A", 用“关”替换“开”
        if _FORWARD.search(between):
            if _BACKWARD_LEAD.search(instruction[:start_a]):
                return TextEdit(old=b, new=a)  # use "B" to replace "A", 用“关”来替换“开”
            return TextEdit(old=a, new=b)
    if spans:
        start, _, text = spans[-1]
        if _NEW_ONLY_LEAD.search(instruction[:start]):
            return TextEdit(old=None, new=text)
    return None


def normalize_text(text: str, *, case_sensitive: bool = False) -> str:
    """Text as compared: Unicode NFKC (full-width letters and digits become ASCII, 'ﬁ' becomes 'fi'),
    whitespace removed (OCR often drops or adds spaces; Chinese has none), case folded unless asked."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(text.split())
    return text if case_sensitive else text.casefold()


def normalized_edit_distance(text: str, target: str, *, case_sensitive: bool = False) -> float:
    """Levenshtein distance / length of the longer text, after :func:`normalize_text`; 0.0 when both
    are empty."""
    return Levenshtein.normalized_distance(
        normalize_text(text, case_sensitive=case_sensitive), normalize_text(target, case_sensitive=case_sensitive)
    )


def substring_edit_distance(text: str, target: str, *, case_sensitive: bool = False) -> float:
    """Edit distance from ``target`` to the stretch of ``text`` closest to it, divided by the target's
    length, after :func:`normalize_text`: 0.0 when the target appears in the text, 1.0 when nothing of
    it does. (Semi-global Levenshtein: characters of ``text`` before and after the stretch are free.)"""
    text = normalize_text(text, case_sensitive=case_sensitive)
    target = normalize_text(target, case_sensitive=case_sensitive)
    if not target:
        return 0.0
    # previous[j]: cost of matching target[:i] so that it ends just before text[j]; row 0 is free.
    previous = [0] * (len(text) + 1)
    for i, wanted in enumerate(target, start=1):
        current = [i] + [0] * len(text)
        for j, seen in enumerate(text, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (wanted != seen))
        previous = current
    return min(previous) / len(target)


def closest_text_distance(lines: Iterable[str], target: str, *, case_sensitive: bool = False) -> float:
    """How far OCR lines are from containing ``target``: :func:`substring_edit_distance` on the lines
    joined (OCR drops spaces and splits lines at wide gaps, an edited sign holds other text); 1.0 when
    there is no line."""
    joined = "".join(str(line) for line in lines)
    if not joined.strip():
        return 1.0
    return substring_edit_distance(joined, target, case_sensitive=case_sensitive)


def text_edit_report(instruction: str, ocr_lines: Iterable[str]) -> dict:
    """What a vttie response or the batch runner reports about an edited image: its OCR text and, when the
    instruction names the new text, the edit's old and new text and the distance of the reading to them.

    The distances are :func:`closest_text_distance`: ``new_text_distance`` near 0 means the new text is
    there; ``old_text_distance`` near 0 means the old text is still there.
    """
    lines = [str(line) for line in ocr_lines]
    report: dict = {"ocr_text": "\n".join(lines)}
    edit = extract_text_edit(instruction)
    if edit is not None:
        report["old_text"] = edit.old
        report["new_text"] = edit.new
        report["new_text_distance"] = closest_text_distance(lines, edit.new)
        if edit.old is not None:
            report["old_text_distance"] = closest_text_distance(lines, edit.old)
    return report
