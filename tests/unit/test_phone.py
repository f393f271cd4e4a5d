"""E.164 normalisation: what is accepted, what is refused and why, and its properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging.domain.errors import InvalidInput
from messaging.domain.phone import mask_phone, normalize_phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+44 20 7946 0958", "+442079460958"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+1.415.555.0100", "+14155550100"),
        ("  +4915112345678 ", "+4915112345678"),
        ("+12345678", "+12345678"),  # 8 digits: the shortest accepted
        ("+123456789012345", "+123456789012345"),  # 15 digits: E.164's longest
    ],
)
def test_accepted_numbers_are_normalised(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("4155550100", "must start with '+'"),
        ("0044 20 7946 0958", "must start with '+'"),
        ("+0 44 20 7946", "must not start with 0"),
        ("+1234567", "has 7 digits"),
        ("+1234567890123456", "has 16 digits"),
        ("+1 415 555 0100 ext 2", "contains 'e'"),
        ("+1/415/555/0100", "contains '/'"),
        ("+1 415 ++555 0100", "contains '+'"),
        ("+\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669", "contains"),  # Arabic-Indic
        ("+", "no digits"),
        ("+" + "1" * 70, "longer than"),
    ],
)
def test_malformed_numbers_say_what_is_wrong(raw: str, says: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_phone(raw)
    assert says in info.value.message


def test_masked_phone_keeps_only_the_ends() -> None:
    assert mask_phone("+442079460958") == "+44********58"


SEPARATOR = st.sampled_from([" ", "-", ".", "(", ")", "\t"])
E164 = st.builds(
    lambda first, rest: "+" + first + rest,
    st.sampled_from("123456789"),
    st.text(alphabet="0123456789", min_size=7, max_size=14),
)


@given(E164)
def test_valid_numbers_are_fixed_points(phone: str) -> None:
    assert normalize_phone(phone) == phone


@given(E164, st.data())
def test_separators_do_not_change_the_number(phone: str, data: st.DataObject) -> None:
    decorated = "+"
    for digit in phone[1:]:
        decorated += data.draw(st.lists(SEPARATOR, max_size=2).map("".join)) + digit
    if len(decorated) <= 64:
        assert normalize_phone(decorated) == phone


@given(st.text(alphabet="+0123456789 -().x", max_size=30) | st.text(max_size=30))
def test_normalisation_is_idempotent_or_refuses(raw: str) -> None:
    try:
        once = normalize_phone(raw)
    except InvalidInput:
        return
    assert normalize_phone(once) == once
    assert once.startswith("+")
    assert all(char in "0123456789" for char in once[1:])
    assert 8 <= len(once) - 1 <= 15
