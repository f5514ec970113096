"""notary.core.bhttp: variable-length integers (RFC 9000 section 16 / Appendix A.1 examples) and the
field-line checks, through the public decoder."""

from __future__ import annotations

import pytest

from notary.core import bhttp
from notary.errors import OhttpError


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.mark.parametrize("raw,value", [  # RFC 9000 Appendix A.1, as printed there
    (h("c2197c5eff14e88c"), 151288809941952652), (h("9d7f3e7d"), 494878333), (h("7bbd"), 15293),
    (h("25"), 37), (h("4025"), 37),
])
def test_rfc9000_varint_examples_as_a_content_length(raw: bytes, value: int) -> None:
    # A known-length request whose content length is the varint: every form is read, then the
    # content is found truncated (the message is far shorter than the value) unless it is 37.
    msg = h("00") + b"".join(bytes([len(x)]) + x for x in (b"GET", b"https", b"a", b"/")) + h("00") + raw + b"x" * 37
    if value == 37:
        assert bhttp.decode_request(msg).content == b"x" * 37
    else:
        with pytest.raises(OhttpError, match=f"needs {value} bytes"):
            bhttp.decode_request(msg)


def _with_field(name: bytes, value: bytes) -> bytes:
    line = bytes([len(name)]) + name + bytes([len(value)]) + value
    return h("00") + b"".join(bytes([len(x)]) + x for x in (b"GET", b"https", b"a", b"/")) + bytes([len(line)]) + line


@pytest.mark.parametrize("name", [b"a b", b"a:b", b"x\x7f", b"\x00", b"caf\xc3\xa9", b"a\tb"])
def test_field_names_outside_visible_ascii_or_with_an_inner_colon_are_refused(name: bytes) -> None:
    with pytest.raises(OhttpError, match="field name"):
        bhttp.decode_request(_with_field(name, b"v"))


@pytest.mark.parametrize("value", [b"a\x00b", b"a\nb", b"a\rb"])
def test_field_values_with_nul_cr_or_lf_are_refused(value: bytes) -> None:
    with pytest.raises(OhttpError, match="NUL, CR or LF"):
        bhttp.decode_request(_with_field(b"x-a", value))


def test_visible_names_and_a_leading_colon_pass_the_character_check() -> None:
    assert bhttp.decode_request(_with_field(b"X-Odd!#$%&'*+-.^_`|~09", b"v \t\x80")).headers == (
        ("x-odd!#$%&'*+-.^_`|~09", "v \t\x80"),)
    with pytest.raises(OhttpError, match="pseudo-field"):  # passes the characters, refused as a pseudo-field
        bhttp.decode_request(_with_field(b":method", b"GET"))
