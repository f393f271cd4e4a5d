"""Phone numbers in E.164 form: ``+`` then the country code and subscriber number, digits only.

:func:`normalize_phone` is the one place a phone number enters the system: login, lookup and
storage all use its result, so ``"+44 20 7946 0958"`` and ``"+442079460958"`` are one user. It
checks the shape of E.164 only (a leading ``+``, a country code that does not start with 0,
8 to 15 digits in all); it does not know each country's numbering plan, which would need a
phone library, and an OTP sent to a number that does not exist is simply never received.
"""

from __future__ import annotations

from messaging.domain.errors import InvalidInput

MIN_DIGITS = 8
MAX_DIGITS = 15  # ITU-T E.164: at most 15 digits, country code included
MAX_INPUT_CHARS = 64  # generous for separators; longer input is refused before any parsing
SEPARATORS = frozenset(" -().\t")
DIGITS = frozenset("0123456789")  # ASCII only: str.isdigit() would accept e.g. Arabic-Indic digits

EXAMPLE = "+14155550100"


def normalize_phone(raw: str) -> str:
    """``raw`` as E.164 (``+`` and 8 to 15 digits), or :class:`InvalidInput` saying what is wrong.

    Spaces, tabs, dashes, dots and parentheses are dropped; nothing else is accepted. The result
    is a fixed point: ``normalize_phone(normalize_phone(x)) == normalize_phone(x)``.
    """
    if len(raw) > MAX_INPUT_CHARS:
        raise InvalidInput(f"phone number is longer than {MAX_INPUT_CHARS} characters")
    text = raw.strip()
    if not text:
        raise InvalidInput(f"phone number is empty; expected E.164 such as {EXAMPLE}")
    if not text.startswith("+"):
        raise InvalidInput(
            "phone number must start with '+' and the country code (E.164, e.g. "
            f"{EXAMPLE}); national formats and the 00 prefix are not accepted"
        )
    digits: list[str] = []
    for char in text[1:]:
        if char in DIGITS:
            digits.append(char)
        elif char not in SEPARATORS:
            raise InvalidInput(
                f"phone number contains {char!r}: only digits after the leading '+', "
                "and spaces, dashes, dots or parentheses between them, are allowed"
            )
    if not digits:
        raise InvalidInput(f"phone number has no digits; expected E.164 such as {EXAMPLE}")
    if digits[0] == "0":
        raise InvalidInput("phone number's country code must not start with 0")
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise InvalidInput(
            f"phone number has {len(digits)} digits; E.164 numbers have "
            f"{MIN_DIGITS} to {MAX_DIGITS} digits including the country code"
        )
    return "+" + "".join(digits)


def mask_phone(phone: str) -> str:
    """A phone number for logs: the country-code side and the last two digits only."""
    if len(phone) <= 5:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 5) + phone[-2:]
