"""Text made safe to print for a person to review: what would move the cursor, vanish or reorder the text is
written as escapes."""

from __future__ import annotations

#: Characters that render as nothing or reorder the text around them: zero-width and bidirectional controls.
_INVISIBLE = frozenset([*range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF, 0x00AD])


def shown(text: str) -> str:
    """`text` safe to print for a person to review: control characters (but tab), invisible and bidirectional
    characters, and bytes that are not UTF-8 (in names) written as escapes, so that what is printed is all there is."""
    if text.isprintable() and (text.isascii() or not any(ord(c) in _INVISIBLE for c in text)):
        return text  # ASCII first: every invisible character is beyond it, and most text (a request's line) is ASCII
    out = []
    for c in text:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif c != "\t" and (o < 0x20 or 0x7F <= o <= 0x9F or o in _INVISIBLE or not c.isprintable() and o < 0x3000):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)
