"""Undoing a body's Content-Encoding within bounds: a few hundred compressed bytes must not become gigabytes in the
proxy (an 841-byte brotli body grew it to 3.1 GB), so decoding stops, and fails, past a size or a ratio."""

from __future__ import annotations

import io
import zlib

#: Decoded bytes past which a body is refused rather than decoded further.
MAX_DECODED = 64 << 20
#: Past this many decoded bytes, a body may be at most this many times its encoded size.
RATIO_FLOOR, MAX_RATIO = 1 << 20, 200
#: Compressed bytes fed to the brotli decoder at a time (its binding has no output limit of its own).
_BROTLI_STEP = 16
_ZLIB_STEP = 1 << 16


class TooLarge(ValueError):
    """The body decodes to more than goex-proxy will hold."""


def decode(raw: bytes, coding: str) -> bytes:
    """`raw` with `coding` (identity, gzip, deflate, br, zstd) undone; ValueError if it does not decode, TooLarge if it
    decodes past the bounds."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return raw
    limit = _limit(len(raw))
    if coding in ("gzip", "x-gzip"):
        return _zlib(raw, 16 + zlib.MAX_WBITS, limit, members=True)
    if coding == "deflate":  # servers accept both the zlib-wrapped form (the standard) and raw deflate
        try:
            return _zlib(raw, zlib.MAX_WBITS, limit)
        except TooLarge:
            raise
        except ValueError:
            return _zlib(raw, -zlib.MAX_WBITS, limit)
    if coding == "br":
        return _brotli(raw, limit)
    if coding == "zstd":
        return _zstd(raw, limit)
    raise ValueError(f"unknown content encoding {coding!r}")


#: How many compressed layers inside a body are looked into (gzip in gzip in gzip).
MAX_INNER_LAYERS = 3
_ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


def inner_layers(content: bytes) -> list[bytes]:
    """The layers a client could still decompress out of an already decoded body (gzip or zlib data inside it,
    which it may undo although no header says so), within the same bounds; a layer that does not decode ends it."""
    layers: list[bytes] = []
    while len(layers) < MAX_INNER_LAYERS:
        if content[:2] == b"\x1f\x8b":
            coding = "gzip"
        elif content[:2] in _ZLIB_HEADERS:
            coding = "deflate"
        else:
            break
        try:
            content = decode(content, coding)
        except ValueError:
            break
        layers.append(content)
    return layers


def _limit(encoded: int) -> int:
    return min(MAX_DECODED, max(RATIO_FLOOR, MAX_RATIO * encoded))


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"it decodes to more than {limit:,} bytes (at most {MAX_DECODED:,}, or {MAX_RATIO} times its "
                    "encoded size past 1 MiB)")


def _zlib(raw: bytes, wbits: int, limit: int, members: bool = False) -> bytes:
    out = bytearray()
    pending = raw
    while pending:
        d = zlib.decompressobj(wbits)
        data = pending
        try:  # in steps, so that no step's output is a second copy of everything decoded so far
            while True:
                step = d.decompress(data, min(_ZLIB_STEP, limit + 1 - len(out)))
                out += step
                data = d.unconsumed_tail
                if d.eof or len(out) > limit or not (data or step):
                    break
        except zlib.error as exc:
            raise ValueError(str(exc)) from None
        if len(out) > limit:
            raise _too_large(limit)
        if not d.eof:
            raise ValueError("the compressed data ends early")
        if d.unused_data and not members:  # a client may read on past the stream's end (a second stream, plain bytes)
            raise ValueError("bytes follow the end of the compressed data")
        pending = d.unused_data if members else b""
    return bytes(out)


def _brotli(raw: bytes, limit: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    out = bytearray()
    try:
        for i in range(0, len(raw), _BROTLI_STEP):
            out += d.process(raw[i:i + _BROTLI_STEP])
            if len(out) > limit:
                raise _too_large(limit)
    except brotli.error as exc:
        raise ValueError(f"brotli: {exc}") from None
    if not d.is_finished():
        raise ValueError("the brotli data ends early")
    return bytes(out)


def _zstd(raw: bytes, limit: int) -> bytes:
    import zstandard

    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True) as reader:
            out = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if len(out) > limit:
        raise _too_large(limit)
    return bytes(out)
