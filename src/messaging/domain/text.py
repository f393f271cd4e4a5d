"""Message text rules: any valid UTF-8, stored and returned byte for byte.

No normalisation (NFC/NFD) is applied: emoji, ZWJ sequences, combining marks and right-to-left
text round-trip exactly as sent. Rejected, with nothing stored: empty text, text that is not
valid UTF-8 (in a Python ``str`` that means a lone surrogate, e.g. from a JSON ``"\\ud800"``
escape), and text longer than the limit in UTF-8 bytes.
"""

from __future__ import annotations

from messaging.domain.errors import InvalidInput, LimitExceeded


def validate_text(text: str, max_bytes: int) -> bytes:
    """Return the text's UTF-8 bytes, or raise :class:`InvalidInput` saying what is wrong
    (:class:`LimitExceeded`, a kind of it, when the text is too long)."""
    if not text:
        raise InvalidInput("text must not be empty")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"text is not valid UTF-8: lone surrogate U+{ord(text[exc.start]):04X} "
            f"at position {exc.start}"
        ) from None
    if len(encoded) > max_bytes:
        raise LimitExceeded(
            f"text is {len(encoded)} bytes of UTF-8; the limit is {max_bytes}", "text_bytes"
        )
    return encoded
