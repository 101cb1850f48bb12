"""Signed tokens for public links and HMAC signatures for outgoing webhooks.

Token format: ``<payload>.<signature>``, both unpadded base64url, so a token fits in a URL
path or query without escaping. ``payload`` is compact JSON with sorted keys; the
signature is HMAC-SHA256 over the payload segment exactly as it appears in the token, so
any change to the text of the token breaks it. Decoding is strict (alphabet and canonical
form checked) because Python's base64 decoder silently ignores stray characters and
trailing bits, which would let altered tokens verify.

Two reserved payload keys carry the conventions: ``exp`` (Unix seconds; the token is
invalid from that second on) and ``pur`` (the purpose). A purpose separates token kinds
signed with one secret: an unsubscribe token cannot be replayed as a preference token.
"""

import base64
import binascii
import hashlib
import hmac
import json
import re
from numbers import Real

_TOKEN_CONTEXT = b"drip_marketing.token.v1."
_RESERVED = ("exp", "pur")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_SIGNATURE_BYTES = hashlib.sha256().digest_size


class InvalidToken(ValueError):
    """A token or webhook signature that must be refused; ``reason`` says why.

    Reasons: "malformed", "bad signature", "wrong purpose", "expired" and, for webhook
    timestamps, "timestamp in the future".
    """

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _key(secret):
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str):
        key = secret.encode("utf-8")
    else:
        raise TypeError(f"secret must be str or bytes, got {type(secret).__name__}")
    if not key:
        raise ValueError("refusing to sign or verify with an empty secret")
    return key


def _encode(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(text):
    """Strict unpadded base64url: the text must be the canonical encoding of its bytes."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidToken("malformed")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed") from None
    if _encode(raw) != text:
        raise InvalidToken("malformed")
    return raw


def _mac(key, payload_segment):
    return hmac.new(key, _TOKEN_CONTEXT + payload_segment.encode("ascii"), hashlib.sha256)


def _is_instant(value):
    return not isinstance(value, bool) and isinstance(value, Real)


def sign(secret, payload, *, expires_at, purpose=None):
    """A url-safe token carrying ``payload`` (a JSON-serialisable dict).

    ``expires_at`` is Unix seconds (int) from which the token is refused, or ``None`` for
    no expiry (pass it explicitly: every link should decide). ``purpose`` (e.g.
    "unsubscribe") must be given again to ``verify``. ``exp`` and ``pur`` are reserved
    payload keys. JSON round-trips: tuples come back as lists, keys as strings.
    """
    key = _key(secret)
    if not isinstance(payload, dict):
        raise TypeError(f"token payload must be a dict, got {type(payload).__name__}")
    clash = [name for name in _RESERVED if name in payload]
    if clash:
        raise ValueError(f"token payload keys {clash} are reserved")
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, int)):
        raise ValueError(f"expires_at must be Unix seconds (int) or None, got {expires_at!r}")
    if purpose is not None and not isinstance(purpose, str):
        raise ValueError(f"token purpose must be a string, got {purpose!r}")
    body = dict(payload)
    if expires_at is not None:
        body["exp"] = expires_at
    if purpose is not None:
        body["pur"] = purpose
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"token payload must be JSON-serialisable: {error}") from None
    segment = _encode(text.encode("utf-8"))
    return f"{segment}.{_encode(_mac(key, segment).digest())}"


def verify(secret, token, *, now, purpose=None):
    """The payload ``sign`` was given, if ``token`` is authentic, current and for ``purpose``.

    Raises ``InvalidToken`` with reason "malformed", "bad signature", "wrong purpose" or
    "expired" (checked in that order, so nothing about an unauthentic token is revealed).
    ``now`` is Unix seconds; a token is expired when ``now >= expires_at``.
    """
    key = _key(secret)
    if not _is_instant(now):
        raise TypeError(f"now must be Unix seconds, got {now!r}")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidToken("malformed") from None
    if not isinstance(token, str) or token.count(".") != 1:
        raise InvalidToken("malformed")
    segment, signature_text = token.split(".")
    if not segment:
        raise InvalidToken("malformed")
    raw_payload = _decode(segment)
    signature = _decode(signature_text)
    if len(signature) != _SIGNATURE_BYTES:
        raise InvalidToken("malformed")
    if not hmac.compare_digest(_mac(key, segment).digest(), signature):
        raise InvalidToken("bad signature")
    try:
        body = json.loads(raw_payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidToken("malformed") from None
    if not isinstance(body, dict):
        raise InvalidToken("malformed")
    if body.pop("pur", None) != purpose:
        raise InvalidToken("wrong purpose")
    expires_at = body.pop("exp", None)
    if expires_at is not None and (not _is_instant(expires_at) or now >= expires_at):
        raise InvalidToken("expired")
    return body


# --------------------------------------------------------------------------- webhooks
def _body_bytes(body):
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"webhook body must be bytes, got {type(body).__name__}")


def _webhook_digest(key, timestamp, body):
    return hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def webhook_signature(secret, timestamp, body):
    """The signature header value for an outgoing webhook: ``t=<ts>,v1=<hex>``.

    Stripe's scheme: ``hex`` is HMAC-SHA256 with the shared secret over
    ``"<ts>." + body``, where ``ts`` is Unix seconds. Signing the timestamp lets the
    receiver refuse replays older than its tolerance.
    """
    key = _key(secret)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"webhook timestamp must be Unix seconds (int), got {timestamp!r}")
    return f"t={timestamp},v1={_webhook_digest(key, timestamp, _body_bytes(body))}"


def verify_webhook_signature(secret, header, body, now, tolerance=300):
    """Check a ``t=…,v1=…`` header for ``body``; returns its timestamp (Unix seconds).

    Several ``v1`` entries are allowed (the sender may sign with an old and a new secret
    while rotating); one must match. Raises ``InvalidToken``: "malformed", "bad signature",
    "expired" (older than ``tolerance`` seconds) or "timestamp in the future" (more than
    ``tolerance`` ahead, i.e. clock skew beyond tolerance).
    """
    key = _key(secret)
    if not _is_instant(now):
        raise TypeError(f"now must be Unix seconds, got {now!r}")
    if not isinstance(header, str):
        raise InvalidToken("malformed")
    timestamps, signatures = [], []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise InvalidToken("malformed")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
        # Other schemes (v0, future versions) are ignored, as Stripe's clients do.
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        raise InvalidToken("malformed")
    if not signatures:
        raise InvalidToken("malformed")
    # Like Stripe, sign over the timestamp text exactly as sent.
    expected = _webhook_digest(key, timestamps[0], _body_bytes(body)).encode("ascii")
    # Compare all entries (no early exit) to keep timing independent of which one matches.
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected, signature.encode("utf-8"))
    if not matched:
        raise InvalidToken("bad signature")
    timestamp = int(timestamps[0])
    if now - timestamp > tolerance:
        raise InvalidToken("expired")
    if timestamp - now > tolerance:
        raise InvalidToken("timestamp in the future")
    return timestamp


__all__ = [
    "InvalidToken",
    "sign",
    "verify",
    "verify_webhook_signature",
    "webhook_signature",
]
