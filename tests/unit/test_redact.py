"""The scrubber: spellings replaced across line breaks, header fields, stream segments and byte ranges."""

from __future__ import annotations

import base64
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from goex_proxy.credentials import Credential, Injection
from goex_proxy.redact import PARTIAL_MIN, WITHHELD, SecretScrubber
from goex_proxy.secretref import SecretRef

SECRET = "xoxb-UNIT&<b>\"q'+/=end-7f3a9c2e"
PLACEHOLDER = "goex-placeholder-unit"


def scrubber() -> SecretScrubber:
    credential = Credential("unit", SecretRef(vault="unit"), (), Injection("header"))
    return SecretScrubber({form: PLACEHOLDER for form in credential.forms(SECRET)})


def test_base64_wrapped_across_lines_is_replaced() -> None:
    """MIME wraps base64 every 76 characters; the secret's base64 spelling broken by a line break is still found."""
    wrapped = base64.encodebytes(b"padding " * 9 + SECRET.encode() + b" trailing text")
    cleaned = scrubber().bytes(wrapped)
    assert PLACEHOLDER.encode() in cleaned
    letters = re.sub(rb"[^A-Za-z0-9+/]", b"", cleaned)  # as a lenient decoder reads it
    assert SECRET.encode()[4:20] not in base64.b64decode(letters[:len(letters) // 4 * 4])


def test_fields_catch_a_secret_split_across_values_and_names() -> None:
    """Consecutive values are one stream: the first part is withheld, the rest replaced; a name holding a spelling
    is replaced too."""
    cleaned = scrubber().fields([(b"X-A", SECRET[:10].encode()), (b"X-B", SECRET[10:].encode()),
                                 (SECRET.encode().hex().encode(), b"1")])
    assert cleaned[0] == (b"X-A", WITHHELD) and cleaned[1][1] == PLACEHOLDER.encode()
    assert cleaned[2][0] == PLACEHOLDER.encode()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=1, max_value=len(SECRET) - 1), max_size=6, unique=True),
       st.binary(max_size=20), st.binary(max_size=20))
def test_a_stream_cut_anywhere_gives_back_at_most_a_few_bytes_of_the_secret(cuts, before, after) -> None:
    """However the secret is cut into segments (WebSocket messages), the agent's joined view holds fewer than
    PARTIAL_MIN of its leading bytes and none of the rest."""
    data = before + SECRET.encode() + after
    points = sorted({0, len(data), *(len(before) + c for c in cuts)})
    stream = scrubber().stream()
    joined = b"".join(stream.feed(data[a:b]) for a, b in zip(points, points[1:], strict=False))
    assert SECRET.encode()[:PARTIAL_MIN] not in joined
    assert all(SECRET.encode()[i:i + PARTIAL_MIN] not in joined for i in range(1, len(SECRET) - PARTIAL_MIN))


def test_a_part_keeps_its_length_and_hides_pieces_at_its_edges() -> None:
    """A byte range keeps its length; a piece of the secret of PARTIAL_MIN bytes or more at either edge becomes
    `*`s, as does a whole spelling inside, while ordinary bytes stay."""
    s, body = scrubber(), b"0123456789" + SECRET.encode() + b"abcdefghij"
    assert s.part(body) == b"0123456789" + b"*" * len(SECRET) + b"abcdefghij"
    cut = 10 + 12
    assert s.part(body[:cut]) == b"0123456789" + b"*" * 12
    assert s.part(body[cut:]) == b"*" * (len(SECRET) - 12) + b"abcdefghij"
    assert s.part(b"plain text, nothing secret") == b"plain text, nothing secret"
