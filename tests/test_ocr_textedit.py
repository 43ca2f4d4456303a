"""Text-edit checks for vttie: the old/new text of an instruction, and the normalized edit distance."""

from __future__ import annotations

import pytest

from genserve.ocr.textedit import (
    TextEdit,
    closest_text_distance,
    extract_text_edit,
    normalize_text,
    normalized_edit_distance,
    quoted_spans,
    substring_edit_distance,
    text_edit_report,
)


@pytest.mark.parametrize(
    "instruction, old, new",
    [
        # English, ASCII and typographic quotes
        ('change "OPEN" to "CLOSED"', "OPEN", "CLOSED"),
        ("replace 'A' with 'B'", "A", "B"),
        ("Change the text from ‘OPEN’ to ‘CLOSED’ on the shop's door", "OPEN", "CLOSED"),
        ("Replace “Coffee” with “Tea” on the menu board", "Coffee", "Tea"),
        ("change the sign's text 'OPEN' to read 'CLOSED'", "OPEN", "CLOSED"),
        ("Replace the word 'don't' with 'do'", "don't", "do"),
        ('"SALE" -> "SOLD OUT"', "SALE", "SOLD OUT"),
        ("Use 'SALE' instead of 'NEW'", "NEW", "SALE"),
        ('use "B" to replace "A"', "A", "B"),
        # Chinese quoting styles
        ("把“开”改成“关”", "开", "关"),
        ("将「開」改為「關」", "開", "關"),
        ("把招牌上的『营业中』换成『休息中』", "营业中", "休息中"),
        ('把"入口"替换为"出口"', "入口", "出口"),
        ("用“关”替换“开”", "开", "关"),
        ("将《春》改成《秋》", "春", "秋"),
        # Only the new text named
        ("Make the sign say 'SALE'", None, "SALE"),
        ('change the title to "Hello World"', None, "Hello World"),
        ("改成“关”", None, "关"),
    ],
)
def test_extracts_old_and_new_text(instruction, old, new):
    assert extract_text_edit(instruction) == TextEdit(old=old, new=new)


@pytest.mark.parametrize(
    "instruction",
    ["make it look vintage", "add snow to the roof", 'remove the "EXIT" sign', "it's 'X' here and 'Y' there", ""],
)
def test_names_no_new_text(instruction):
    assert extract_text_edit(instruction) is None


def test_quoted_spans_in_every_style():
    text = "\"a\" 'b' “c” ‘d’ 「e」 『f』 《g》 «h»"
    assert [span for _, _, span in quoted_spans(text)] == list("abcdefgh")
    assert quoted_spans("the shop's owner isn't here") == []


@pytest.mark.parametrize(
    "text, target, distance",
    [
        ("CLOSED", "CLOSED", 0.0),
        ("CL0SED", "CLOSED", 1 / 6),
        ("closed", "CLOSED", 0.0),  # case folded
        ("OPEN 24 HOURS", "OPEN24HOURS", 0.0),  # spaces ignored
        ("ＣＬＯＳＥＤ", "CLOSED", 0.0),  # full-width letters (NFKC)
        ("OPEN", "CLOSED", 4 / 6),  # insert C, L; O=O; P->S; E=E; N->D: 4 edits over 6 characters
        ("关", "开", 1.0),
        ("营业中", "营业", 1 / 3),
        ("", "", 0.0),
        ("", "ABC", 1.0),
    ],
)
def test_normalized_edit_distance(text, target, distance):
    assert normalized_edit_distance(text, target) == pytest.approx(distance)


def test_distance_can_be_case_sensitive():
    assert normalized_edit_distance("closed", "CLOSED", case_sensitive=True) == 1.0
    assert normalize_text(" Ｏpen\t24 ") == "open24"


@pytest.mark.parametrize(
    "text, target, distance",
    [
        ("CLOSED 24 HOURS", "CLOSED", 0.0),  # the target inside other text
        ("NOW CL0SED", "closed", 1 / 6),  # one substitution
        ("NOW CLSED", "CLOSED", 1 / 6),  # one deletion
        ("CLOSED24HOURS", "OPEN", 2 / 4),  # best stretch "OSE": O, P->S, E, N missing
        ("xyz", "CLOSED", 1.0),
        ("欢迎光临营业时间", "营业中", 1 / 3),
        ("anything", "", 0.0),
    ],
)
def test_substring_edit_distance(text, target, distance):
    assert substring_edit_distance(text, target) == pytest.approx(distance)


def test_closest_text_distance_joins_split_lines():
    lines = ["OPEN24HOURS", "Fresh Coffee and", "Bagels"]
    assert closest_text_distance(lines, "Fresh Coffee and Bagels") == 0.0
    assert closest_text_distance(lines, "OPEN 24 HOURS") == 0.0
    assert closest_text_distance(lines, "CLOSED") > 0.5
    assert closest_text_distance([], "CLOSED") == 1.0
    assert closest_text_distance(["  "], "CLOSED") == 1.0


def test_report_for_a_vttie_result():
    report = text_edit_report('change "OPEN" to "CLOSED"', ["CLOSED24HOURS", "Fresh Coffee and", "Bagels"])
    assert report == {
        "ocr_text": "CLOSED24HOURS\nFresh Coffee and\nBagels",
        "old_text": "OPEN",
        "new_text": "CLOSED",
        "new_text_distance": 0.0,
        "old_text_distance": 0.5,
    }
    chinese = text_edit_report("把“开”改成“关”", ["关门"])
    assert chinese["new_text_distance"] == 0.0 and chinese["old_text_distance"] == 1.0
    assert text_edit_report("make it brighter", ["OPEN"]) == {"ocr_text": "OPEN"}
