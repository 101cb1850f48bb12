"""Identifier normalisation and hashing (OneID, hashed audiences)."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.identity import (
    IDENTITY_KINDS,
    MAX_ID_LENGTH,
    hash_identifier,
    normalize_email,
    normalize_identity,
    normalize_phone,
)

# --------------------------------------------------------------------------- email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada@example.com \n", "ada@example.com"),
        ("Ada Lovelace <Ada@Example.com>", "ada@example.com"),
        ("mailto:ada@example.com", "ada@example.com"),
        ("ada@example.com.", "ada@example.com"),
        ("first.last+tag@gmail.com", "first.last+tag@gmail.com"),  # no provider guessing
        ("ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ", "ada@example.com"),  # full-width input method
        ("user@bücher.de", "user@xn--bcher-kva.de"),
        ("user@XN--BCHER-KVA.de", "user@xn--bcher-kva.de"),
        ("张伟@例子.中国", "张伟@xn--fsqu00a.xn--fiqs8s"),
        ("o'brien@sub.example.co.uk", "o'brien@sub.example.co.uk"),
    ],
)
def test_normalize_email(raw, expected):
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None, "", "   ", 42, "ada", "ada@", "@example.com", "ada@@example.com",
        "a@b@example.com", "ada lovelace@example.com", "ada@exa mple.com", "ada@localhost",
        "ada@example", "ada@-example.com", "ada@example-.com", "ada@exa_mple.com",
        "ada@1.2.3.4", ".ada@example.com", "ada.@example.com", "a..da@example.com",
        "ada,b@example.com", "ada@example..com", "ada\x00@example.com",
        "a" * 65 + "@example.com", "ada@" + "a" * 64 + ".com",
    ],
)
def test_invalid_emails_are_none(raw):
    assert normalize_email(raw) is None


@given(st.text(max_size=40))
def test_normalize_email_is_idempotent_and_never_raises(text):
    once = normalize_email(text)
    if once is not None:
        assert normalize_email(once) == once
        assert once == once.strip().lower()
        assert once.count("@") == 1


@given(
    st.from_regex(r"[a-z0-9]([a-z0-9._+-]{0,15}[a-z0-9])?", fullmatch=True).filter(
        lambda s: ".." not in s
    ),
    st.from_regex(r"[a-z]{1,10}\.(com|cn|org|co\.uk)", fullmatch=True),
)
def test_case_and_spaces_do_not_matter(local, domain):
    address = f"{local}@{domain}"
    assert normalize_email(address) == address
    assert normalize_email(f"  {address.upper()}\t") == address


# --------------------------------------------------------------------------- phone


@pytest.mark.parametrize(
    "raw",
    [
        "+86 138 1234 5678",
        "+86-138-1234-5678",
        "0086 138 1234 5678",
        "13812345678",
        "138 1234 5678",
        "8613812345678",
        "(+86) 138-1234-5678",
        "１３８１２３４５６７８",
        "tel:+86-138-1234-5678",
        13812345678,
    ],
)
def test_chinese_mobile_forms(raw):
    assert normalize_phone(raw) == "+8613812345678"


def test_other_numbers_and_regions():
    assert normalize_phone("(010) 1234 5678") == "+861012345678"
    assert normalize_phone("+1 (650) 253-0000") == "+16502530000"
    assert normalize_phone("650-253-0000", default_region="US") == "+16502530000"
    assert normalize_phone("030 901820", default_region="DE") == "+4930901820"
    assert normalize_phone("+86 138 1234 5678 ext. 12") == "+8613812345678"


@pytest.mark.parametrize(
    "raw", [None, "", "abc", "12345", "+86138123456789999", "13812345678", True, 1.5]
)
def test_invalid_phones_are_none(raw):
    region = None if raw == "13812345678" else "CN"  # national format needs a region
    assert normalize_phone(raw, default_region=region) is None


@given(st.text(alphabet="0123456789 +-()", max_size=25))
def test_normalize_phone_is_e164_and_idempotent(text):
    once = normalize_phone(text)
    if once is not None:
        assert once.startswith("+") and once[1:].isdigit() and len(once) <= 16
        assert normalize_phone(once) == once


# --------------------------------------------------------------------------- hashing


def test_hash_identifier_is_sha256_of_normalised_value():
    assert hash_identifier("ada@example.com") == hashlib.sha256(b"ada@example.com").hexdigest()
    # the well-known digest of "test@example.com"
    assert hash_identifier("test@example.com") == (
        "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    )
    assert hash_identifier(None) is None
    assert hash_identifier("") is None


def test_hash_after_normalisation_matches_across_spellings():
    spellings = ["Ada@Example.com", " ada@example.com ", "ADA@EXAMPLE.COM"]
    assert len({hash_identifier(normalize_email(s)) for s in spellings}) == 1
    phones = ["+86 138 1234 5678", "0086-13812345678", "138 1234 5678"]
    hashes = {hash_identifier(normalize_phone(p)) for p in phones}
    assert hashes == {hashlib.sha256(b"+8613812345678").hexdigest()}
    assert hash_identifier(normalize_email("not an email")) is None


@given(st.text(min_size=1, max_size=50))
def test_hash_is_hex_sha256(text):
    digest = hash_identifier(text)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest == hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- dispatch


def test_identity_kinds():
    assert IDENTITY_KINDS == (
        "email", "phone", "user_id", "anonymous_id", "wechat_unionid", "wechat_openid",
        "external",
    )


def test_normalize_identity_dispatch():
    assert normalize_identity("email", " Ada@Example.com ") == "ada@example.com"
    assert normalize_identity("phone", "138 1234 5678") == "+8613812345678"
    assert normalize_identity("phone", "650-253-0000", default_region="US") == "+16502530000"
    assert normalize_identity("user_id", "  User-42 ") == "User-42"
    assert normalize_identity("user_id", 42) == "42"
    assert normalize_identity("wechat_openid", " oGZUI0egBJY1zhBYw2KhdUfwVJJE ") == \
        "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
    assert normalize_identity("anonymous_id", "507f191e810c19729de860ea") == \
        "507f191e810c19729de860ea"


@pytest.mark.parametrize("kind", ["user_id", "anonymous_id", "wechat_unionid",
                                  "wechat_openid", "external"])
@pytest.mark.parametrize(
    "raw", [None, "", "   ", "a" * (MAX_ID_LENGTH + 1), "ab\x00cd", "line\nbreak", True]
)
def test_invalid_ids_are_none(kind, raw):
    assert normalize_identity(kind, raw) is None


def test_id_length_limit_is_inclusive():
    assert normalize_identity("external", "x" * MAX_ID_LENGTH) == "x" * MAX_ID_LENGTH


def test_unknown_kind_raises():
    with pytest.raises(ValueError):
        normalize_identity("fax", "123")


@given(st.sampled_from(IDENTITY_KINDS), st.text(max_size=40))
def test_normalize_identity_is_idempotent(kind, text):
    once = normalize_identity(kind, text)
    if once is not None:
        assert normalize_identity(kind, once) == once
