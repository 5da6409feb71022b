import ast

import pytest

from bot.knobs import find_knobs, format_value, set_knobs

SOURCE = '''"""doc"""
import math

DEPTH = 4               # blocks
LEARNING_RATE = 2e-3    # peak lr
NAME = "x"
lower = 3
FLAG = True
PAIR = (1, 2)

def f():
    INNER = 5
'''


def test_finds_only_top_level_numeric_upper_case_constants():
    knobs = find_knobs(SOURCE)
    assert [(k.name, k.value) for k in knobs] == [("DEPTH", 4), ("LEARNING_RATE", 2e-3)]


def test_set_knobs_replaces_literals_and_keeps_comments():
    out = set_knobs(SOURCE, {"DEPTH": 6, "LEARNING_RATE": 0.0035})
    assert "DEPTH = 6               # blocks" in out
    assert "LEARNING_RATE = 0.0035    # peak lr" in out
    ast.parse(out)
    assert {k.name: k.value for k in find_knobs(out)} == {"DEPTH": 6, "LEARNING_RATE": 0.0035}
    assert out.replace("6 ", "4 ", 1).replace("0.0035", "2e-3") == SOURCE


def test_unknown_knob_names_the_known_ones():
    with pytest.raises(KeyError, match="no such knob.*WIDTH.*knobs are DEPTH, LEARNING_RATE"):
        set_knobs(SOURCE, {"WIDTH": 3})


def test_format_value_is_valid_python_and_short():
    assert format_value(7) == "7"
    assert format_value(0.000123456) == "0.000123"
    assert float(format_value(1e-5)) == 1e-5
