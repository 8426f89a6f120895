"""Text hygiene: each fast path gives exactly what the plain regex passes give."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message.text import clean_text, lf, one_line, scrub

# The functions as they were before their fast paths: the definition of the right answer.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
SURROGATE = re.compile(r"[\ud800-\udfff]")
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def reference_scrub(text: str) -> str:
    return SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def reference_one_line(text: str) -> str:
    return " ".join(reference_scrub(CONTROL.sub("", LINE_BREAK.sub(" ", text))).split())


def reference_clean_text(text: str) -> str:
    text = reference_scrub(CONTROL.sub("", LINE_BREAK.sub("\n", text)))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


# Characters each path treats specially, mixed into arbitrary text (surrogates included).
SPECIAL = (
    "\r\n\t \x00\x01\x08\x0b\x0c\x1c\x1f\x7f\x85\xa0\u2028\u2029\u3000\ud800\udbff\udc80\udfff"
)
texts = st.text(
    st.one_of(
        st.sampled_from(SPECIAL), st.characters(exclude_categories=()), st.sampled_from("aZ9.-Жж€")
    )
)
# Mostly ordinary text, which is what takes the fast paths.
plain_texts = st.text(st.sampled_from(" \n\t\u00a0aZ9.-Жж€—"))


@settings(max_examples=1000)
@given(st.one_of(texts, plain_texts))
def test_clean_text_matches_reference(text: str) -> None:
    assert clean_text(text) == reference_clean_text(text)
    assert clean_text(text.replace("\n", "\r\n")) == reference_clean_text(
        text.replace("\n", "\r\n")
    )


@settings(max_examples=1000)
@given(st.one_of(texts, plain_texts))
def test_one_line_matches_reference(text: str) -> None:
    assert one_line(text) == reference_one_line(text)


@settings(max_examples=1000)
@given(st.one_of(texts, plain_texts))
def test_scrub_and_lf_match_reference(text: str) -> None:
    assert scrub(text) == reference_scrub(text)
    assert lf(text) == LINE_BREAK.sub("\n", text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\r",
        "\r\r\n",
        "\n\r",
        "a\r\n\rb",
        " \r\n ",
        "a \x01\nb",
        "a\x00\u2028\nb",
        "x\ud800y",
        "\udfff",
        "ж\x0b\x0cж",
        "line\u3000\r\nnext\x85",
        "\x1c\x1d\x1e\x1f",
    ],
)
def test_edge_cases(text: str) -> None:
    assert clean_text(text) == reference_clean_text(text)
    assert one_line(text) == reference_one_line(text)
    assert scrub(text) == reference_scrub(text)
