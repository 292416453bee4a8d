"""The env-file parser: literal values, tolerated syntax, bad lines with their numbers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workflow.config.envfile import parse_env_text

# One-line values without the quote character that would end them.
_VALUE = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="'\n\r\x85\u2028\u2029"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(_VALUE)
def test_single_quoted_values_come_back_literally(value):
    entries, errors = parse_env_text(f"NAME='{value}'\n")
    assert errors == []
    assert [(e.name, e.value, e.line) for e in entries] == [("NAME", value, 1)]


def test_shell_syntax_is_data_not_code():
    entries, errors = parse_env_text("A=$(rm -rf ~)\nB=${HOME}\nC=`id`\nD=x;y\n")
    assert errors == []
    assert {e.name: e.value for e in entries} == {"A": "$(rm -rf ~)", "B": "${HOME}", "C": "`id`", "D": "x;y"}


def test_bad_lines_are_numbered_and_not_echoed():
    text = "# ok\nGOOD=1\nREMOTE_SSH_PASSWORD hunter2\n9BAD=1\nQ='open\n"
    entries, errors = parse_env_text(text)
    assert [e.name for e in entries] == ["GOOD"]
    assert [e.line for e in errors] == [3, 4, 5]
    assert all("hunter2" not in e.message for e in errors)
    assert "unterminated single quote" in errors[2].message


def test_text_after_closing_quote_is_an_error_but_a_comment_is_not():
    entries, errors = parse_env_text("A='x' # fine\nB='x' y\n")
    assert [(e.name, e.value) for e in entries] == [("A", "x")]
    assert [e.line for e in errors] == [2] and "after the closing quote" in errors[0].message
