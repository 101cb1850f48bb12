"""Signed link tokens and webhook signatures: round trips, tampering, expiry, purpose."""

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.tokens import (
    InvalidToken,
    sign,
    verify,
    verify_webhook_signature,
    webhook_signature,
)

SECRET = "s3cret-database-uuid"
NOW = 1_800_000_000
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def reason(callable_, *args, **kwargs):
    with pytest.raises(InvalidToken) as caught:
        callable_(*args, **kwargs)
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def b64decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --------------------------------------------------------------------------- tokens
def test_round_trip():
    payload = {"partner": 42, "channel": "email", "db": "prod"}
    token = sign(SECRET, payload, expires_at=NOW + 3600, purpose="unsubscribe")
    assert verify(SECRET, token, now=NOW, purpose="unsubscribe") == payload


def test_round_trip_without_expiry_or_purpose_and_with_unicode():
    payload = {"name": "王小明", "tags": ["vip", "新客"], "nested": {"a": [1, 2.5, None, True]}}
    token = sign(SECRET, payload, expires_at=None)
    assert verify(SECRET, token, now=NOW) == payload
    assert verify(SECRET, token, now=10**12) == payload  # no expiry


def test_token_is_url_safe_compact_and_sorted():
    token = sign(SECRET, {"b": 1, "a": 2}, expires_at=NOW, purpose="pref")
    segment, signature = token.split(".")
    assert set(segment + signature) <= set(BASE64URL)
    assert b64decode(segment) == b'{"a":2,"b":1,"exp":1800000000,"pur":"pref"}'
    assert len(b64decode(signature)) == 32
    # Same input, same token: signing is deterministic.
    assert sign(SECRET, {"a": 2, "b": 1}, expires_at=NOW, purpose="pref") == token


def test_expiry_edges():
    token = sign(SECRET, {"p": 1}, expires_at=NOW)
    assert verify(SECRET, token, now=NOW - 1) == {"p": 1}
    assert reason(verify, SECRET, token, now=NOW) == "expired"
    assert reason(verify, SECRET, token, now=NOW + 1) == "expired"


def test_purpose_must_match_both_ways():
    unsubscribe = sign(SECRET, {"p": 1}, expires_at=None, purpose="unsubscribe")
    assert reason(verify, SECRET, unsubscribe, now=NOW, purpose="preferences") == "wrong purpose"
    assert reason(verify, SECRET, unsubscribe, now=NOW) == "wrong purpose"
    plain = sign(SECRET, {"p": 1}, expires_at=None)
    assert reason(verify, SECRET, plain, now=NOW, purpose="unsubscribe") == "wrong purpose"


def test_wrong_secret_is_bad_signature():
    token = sign(SECRET, {"p": 1}, expires_at=None)
    assert reason(verify, "another-secret", token, now=NOW) == "bad signature"


def test_signature_checked_before_expiry_and_purpose():
    token = sign(SECRET, {"p": 1}, expires_at=NOW - 10, purpose="a")
    # An attacker without the secret learns nothing about expiry or purpose.
    assert reason(verify, "guess", token, now=NOW, purpose="b") == "bad signature"


def test_flipped_payload_byte_fails():
    token = sign(SECRET, {"partner": 42}, expires_at=None)
    segment, signature = token.split(".")
    raw = bytearray(b64decode(segment))
    raw[raw.index(b"4")] = ord("5")  # partner 42 → 52
    forged = f"{b64encode(bytes(raw))}.{signature}"
    assert reason(verify, SECRET, forged, now=NOW) == "bad signature"


def test_flipped_signature_byte_fails():
    token = sign(SECRET, {"partner": 42}, expires_at=None)
    segment, signature = token.split(".")
    raw = bytearray(b64decode(signature))
    raw[0] ^= 0x01
    assert reason(verify, SECRET, f"{segment}.{b64encode(bytes(raw))}", now=NOW) == "bad signature"


def test_swapped_payloads_fail():
    first = sign(SECRET, {"partner": 1}, expires_at=None)
    second = sign(SECRET, {"partner": 2}, expires_at=None)
    swapped = first.split(".")[0] + "." + second.split(".")[1]
    assert reason(verify, SECRET, swapped, now=NOW) == "bad signature"


def test_extending_expiry_without_secret_fails():
    token = sign(SECRET, {"p": 1}, expires_at=NOW - 1)
    segment, signature = token.split(".")
    body = json.loads(b64decode(segment))
    body["exp"] = NOW + 10**6
    forged_segment = b64encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    assert reason(verify, SECRET, f"{forged_segment}.{signature}", now=NOW) == "bad signature"


def test_non_canonical_base64_is_malformed():
    token = sign(SECRET, {"p": 1}, expires_at=None)
    segment, signature = token.split(".")
    # 32 bytes encode to 43 chars whose last carries 2 unused bits: a decoder that
    # ignores them would accept this variant.
    last = signature[-1]
    sibling = BASE64URL[BASE64URL.index(last) ^ 1]
    assert b64decode(signature[:-1] + sibling) == b64decode(signature)
    assert reason(verify, SECRET, f"{segment}.{signature[:-1]}{sibling}", now=NOW) == "malformed"


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "a.b.c",
        ".abc",
        "abc.",
        "ab$c.def",
        "abc.de f",
        "abc=.def",
        "ééé.abc",
        None,
        123,
        "a" * 10 + "." + "b" * 43,
    ],
)
def test_malformed_tokens(token):
    assert reason(verify, SECRET, token, now=NOW) == "malformed"


def test_bytes_token_accepted():
    token = sign(SECRET, {"p": 1}, expires_at=None)
    assert verify(SECRET, token.encode(), now=NOW) == {"p": 1}
    assert reason(verify, SECRET, b"\xff\xfe.abc", now=NOW) == "malformed"


def test_signed_non_object_payload_is_malformed():
    # Only reachable with the secret; still refused cleanly rather than crashing.
    segment = b64encode(b"[1,2]")
    mac = hmac.new(
        SECRET.encode(), b"drip_marketing.token.v1." + segment.encode(), hashlib.sha256
    ).digest()
    assert reason(verify, SECRET, f"{segment}.{b64encode(mac)}", now=NOW) == "malformed"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"payload": {"exp": 1}}, ValueError, "reserved"),
        ({"payload": {"pur": "x"}}, ValueError, "reserved"),
        ({"payload": ["not", "a", "dict"]}, TypeError, "must be a dict"),
        ({"payload": {"when": object()}}, ValueError, "JSON-serialisable"),
        ({"expires_at": 1.5}, ValueError, "expires_at"),
        ({"expires_at": True}, ValueError, "expires_at"),
        ({"purpose": 3}, ValueError, "purpose"),
        ({"secret": ""}, ValueError, "empty secret"),
        ({"secret": None}, TypeError, "secret must be"),
    ],
)
def test_sign_rejects_bad_input(kwargs, error, message):
    arguments = {"secret": SECRET, "payload": {"p": 1}, "expires_at": None, **kwargs}
    secret, payload = arguments.pop("secret"), arguments.pop("payload")
    with pytest.raises(error, match=message):
        sign(secret, payload, **arguments)


def test_sign_requires_explicit_expiry_decision():
    with pytest.raises(TypeError):
        sign(SECRET, {"p": 1})  # expires_at is keyword-only and required


def test_invalid_token_is_a_value_error():
    assert issubclass(InvalidToken, ValueError)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.text(max_size=8).filter(lambda key: key not in ("exp", "pur")),
        st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.none()),
        max_size=4,
    ),
    st.one_of(st.none(), st.integers(NOW + 1, NOW + 10**6)),
    st.one_of(st.none(), st.sampled_from(["unsubscribe", "preferences", "track"])),
)
def test_round_trip_property(payload, expires_at, purpose):
    token = sign(SECRET, payload, expires_at=expires_at, purpose=purpose)
    assert verify(SECRET, token, now=NOW, purpose=purpose) == payload


@st.composite
def mutations(draw):
    token = sign(
        SECRET,
        draw(st.dictionaries(st.sampled_from("abcdef"), st.integers(), min_size=1, max_size=3)),
        expires_at=draw(st.one_of(st.none(), st.just(NOW + 100))),
        purpose=draw(st.one_of(st.none(), st.just("unsubscribe"))),
    )
    kind = draw(st.sampled_from(["replace", "insert", "delete", "swap", "truncate", "append"]))
    position = draw(st.integers(0, len(token) - 1))
    char = draw(st.sampled_from(BASE64URL + ".=+/ %"))
    if kind == "replace":
        mutated = token[:position] + char + token[position + 1 :]
    elif kind == "insert":
        mutated = token[:position] + char + token[position:]
    elif kind == "delete":
        mutated = token[:position] + token[position + 1 :]
    elif kind == "swap":
        other = draw(st.integers(0, len(token) - 1))
        chars = list(token)
        chars[position], chars[other] = chars[other], chars[position]
        mutated = "".join(chars)
    elif kind == "truncate":
        mutated = token[:position]
    else:
        mutated = token + draw(st.text(alphabet=BASE64URL + ".", min_size=1, max_size=4))
    return token, mutated


@settings(max_examples=400)
@given(mutations())
def test_any_mutation_of_a_valid_token_fails(pair):
    token, mutated = pair
    if mutated == token:
        return  # e.g. swapping two equal characters
    with pytest.raises(InvalidToken) as caught:
        verify(SECRET, mutated, now=NOW, purpose=None)
    # Nothing but these reasons; never "expired"/"wrong purpose" on an altered token.
    assert caught.value.reason in ("malformed", "bad signature")


# --------------------------------------------------------------------------- webhooks
BODY = b'{"event":"cart_abandoned","partner":42}'


def test_webhook_signature_is_stripe_style():
    header = webhook_signature(SECRET, NOW, BODY)
    expected = hmac.new(SECRET.encode(), b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_webhook_round_trip_and_tolerance_edges():
    header = webhook_signature(SECRET, NOW, BODY)
    assert verify_webhook_signature(SECRET, header, BODY, NOW) == NOW
    assert verify_webhook_signature(SECRET, header, BODY, NOW + 300) == NOW
    assert reason(verify_webhook_signature, SECRET, header, BODY, NOW + 301) == "expired"
    assert verify_webhook_signature(SECRET, header, BODY, NOW - 300) == NOW
    assert (
        reason(verify_webhook_signature, SECRET, header, BODY, NOW - 301)
        == "timestamp in the future"
    )
    assert verify_webhook_signature(SECRET, header, BODY, NOW + 3000, tolerance=3600) == NOW


def test_webhook_tampering_fails():
    header = webhook_signature(SECRET, NOW, BODY)
    assert reason(verify_webhook_signature, SECRET, header, BODY + b" ", NOW) == "bad signature"
    assert reason(verify_webhook_signature, "other", header, BODY, NOW) == "bad signature"
    # Replaying the signature with a fresher timestamp breaks it.
    moved = header.replace(f"t={NOW}", f"t={NOW + 10}")
    assert reason(verify_webhook_signature, SECRET, moved, BODY, NOW) == "bad signature"


def test_webhook_accepts_any_matching_v1_and_ignores_other_schemes():
    good = webhook_signature(SECRET, NOW, BODY).split(",")[1]
    header = f"t={NOW},v1={'0' * 64},v0=legacy,{good}"
    assert verify_webhook_signature(SECRET, header, BODY, NOW) == NOW


def test_webhook_str_body_is_utf8():
    text = '{"name":"王小明"}'
    header = webhook_signature(SECRET, NOW, text)
    assert verify_webhook_signature(SECRET, header, text.encode("utf-8"), NOW) == NOW


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={NOW}",
        "v1=abc",
        f"t=abc,v1={'0' * 64}",
        f"t={NOW},t={NOW},v1=00",
        f"t=-5,v1={'0' * 64}",
        f"t=١٢٣,v1={'0' * 64}",
        None,
        f"t={NOW};v1=00",
    ],
)
def test_webhook_malformed_headers(header):
    assert reason(verify_webhook_signature, SECRET, header, BODY, NOW) == "malformed"


def test_webhook_non_ascii_signature_is_bad_not_a_crash():
    header = f"t={NOW},v1=é{'0' * 63}"
    assert reason(verify_webhook_signature, SECRET, header, BODY, NOW) == "bad signature"


@pytest.mark.parametrize("timestamp", [-1, 1.5, "1800000000", True])
def test_webhook_signature_rejects_bad_timestamp(timestamp):
    with pytest.raises(ValueError, match="Unix seconds"):
        webhook_signature(SECRET, timestamp, BODY)
