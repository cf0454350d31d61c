"""Bodies decode as servers decode them, within bounds: every encoding round-trips, bombs and garbage are refused."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from goex_proxy.net.bodies import MAX_DECODED, TooLarge, decode

DATA = b'{"channel": "C0BOTS", "text": "' + b"why did the proxy cross the road? " * 500 + b'"}'


@pytest.mark.parametrize(("coding", "encoded", "expected"), [
    ("identity", DATA, DATA),
    ("gzip", gzip.compress(DATA), DATA),
    ("GZIP", gzip.compress(DATA), DATA),
    ("gzip", gzip.compress(DATA) + gzip.compress(DATA), DATA + DATA),  # two members, as servers read them
    ("deflate", zlib.compress(DATA), DATA),
    ("deflate", zlib.compress(DATA)[2:-4], DATA),  # raw deflate, which servers accept too
    ("br", brotli.compress(DATA), DATA),
    ("zstd", zstandard.ZstdCompressor().compress(DATA), DATA),
])
def test_each_encoding_decodes_to_the_bytes_sent(coding, encoded, expected) -> None:
    """What was compressed comes back byte for byte."""
    assert decode(encoded, coding) == expected


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_decompression_bomb_is_refused_before_it_is_held(coding) -> None:
    """200 MiB of zeros in a few hundred compressed bytes: refused past the bounds, not decoded whole."""
    compress = {"gzip": lambda data: gzip.compress(data, 9), "deflate": lambda data: zlib.compress(data, 9),
                "br": lambda data: brotli.compress(data, quality=5),
                "zstd": lambda data: zstandard.ZstdCompressor(level=3).compress(data)}[coding]
    bomb = compress(b"\0" * (200 << 20))
    assert len(bomb) < 250_000
    with pytest.raises(TooLarge, match="decodes to more than"):
        decode(bomb, coding)


def test_a_large_body_of_a_plausible_ratio_decodes() -> None:
    """A body that compresses as text does (well under 200:1) decodes even past 1 MiB."""
    text = b"".join(b"%d: some json-ish line of text with a number\n" % i for i in range(60_000))
    assert len(text) > 2 << 20
    assert decode(gzip.compress(text), "gzip") == text
    assert MAX_DECODED >= 64 << 20


@pytest.mark.parametrize(("coding", "encoded"), [("gzip", b"not gzip"), ("gzip", gzip.compress(DATA)[:-8]),
                                                 ("br", b"\x01\x02"), ("zstd", b"zz"), ("compress", b"x")])
def test_garbage_or_a_truncated_body_does_not_decode(coding, encoded) -> None:
    """A body that is not what its encoding says is an error, never bytes read some other way."""
    with pytest.raises(ValueError):
        decode(encoded, coding)


@pytest.mark.parametrize(("coding", "encoded"), [
    ("deflate", zlib.compress(DATA) + b"plain bytes after the stream"),
    ("deflate", zlib.compress(DATA) + zlib.compress(b"a second stream")),
    ("deflate", zlib.compress(DATA)[2:-4] + b"after raw deflate"),  # raw deflate, no zlib wrapper
    ("gzip", gzip.compress(DATA) + b"plain bytes after the member"),
    ("br", brotli.compress(DATA) + b"after"),
    ("zstd", zstandard.ZstdCompressor().compress(DATA) + b"after"),
])
def test_bytes_after_the_end_of_the_compressed_data_do_not_decode(coding, encoded) -> None:
    """A client may read on past the end of a stream (more bytes, a second stream) where the decoder stopped: what the
    proxy would not have read is refused as undecodable rather than passed unread (the deflate decoder stopped)."""
    with pytest.raises(ValueError):
        decode(encoded, coding)
