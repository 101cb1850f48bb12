"""Normalising identifiers: one person, one value per identifier (OneID, ad audiences).

Every identifier that reaches the module — an email typed in the shop, a phone number
from a mini-program, a Segment ``userId`` — is normalised before it is stored or looked
up, so the same person always resolves to the same ``drip.identity`` row, and hashed
audiences match the ad platforms' own normalisation.

* **email**: Unicode NFKC (full-width ``＠`` and letters from Chinese input methods become
  ASCII), trimmed, lower-cased, an optional ``Name <addr>`` or ``mailto:`` wrapper
  removed, the domain converted to its ASCII (IDNA / punycode) form. Provider-specific
  rules are *not* guessed: dots and ``+tags`` in Gmail addresses are kept, because
  ``a.b@gmail.com`` and ``ab@gmail.com`` are the same inbox only at Google.
* **phone**: parsed with ``phonenumbers`` (spaces, dashes, brackets, ``+86``, ``0086``,
  national format in the default region) and kept only when valid, as E.164
  (``+8613812345678``); extensions are dropped.
* **other ids** (user id, anonymous id, WeChat UnionID / OpenID, external): trimmed, case
  kept (they are opaque and often case-sensitive), at most 255 characters, no control
  characters.

Invalid input gives ``None``, never an exception, so a batch of events can skip the
identifiers it cannot use.
"""

import hashlib
import re
import unicodedata

import phonenumbers

__all__ = [
    "IDENTITY_KINDS",
    "MAX_ID_LENGTH",
    "hash_identifier",
    "normalize_email",
    "normalize_identity",
    "normalize_phone",
]

IDENTITY_KINDS = (
    "email",
    "phone",
    "user_id",
    "anonymous_id",
    "wechat_unionid",
    "wechat_openid",
    "external",
)
MAX_ID_LENGTH = 255

_ANGLE_ADDRESS = re.compile(r"<([^<>]*)>\s*$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LOCAL_FORBIDDEN = set('()<>[]\\,;:"@')


def _has_space_or_control(text):
    if text.isascii():
        # The same test without a Python loop: in ASCII, the white space and control
        # characters are exactly the non-printable ones plus the space.
        return " " in text or not text.isprintable()
    return any(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in text)


def _ascii_domain(domain):
    domain = domain.removesuffix(".")  # the DNS root dot
    try:
        # Python's codec is IDNA 2003 (with nameprep); ASCII labels pass through.
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_domain.split(".")
    if (
        len(labels) < 2
        or len(ascii_domain) > 253
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()  # an IP address is not a mail domain we send to
    ):
        return None
    return ascii_domain


def normalize_email(value):
    """The normalised form of an email address, or ``None`` if it is not one."""
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFKC", value).strip()
    match = _ANGLE_ADDRESS.search(text)
    if match:
        text = match.group(1).strip()
    if text[:7].lower() == "mailto:":
        text = text[7:]
    text = text.lower()
    if not text or _has_space_or_control(text) or text.count("@") != 1:
        return None
    local, domain = text.split("@")
    if (
        not local
        or len(local) > 64
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
        or _LOCAL_FORBIDDEN & set(local)
    ):
        return None
    domain = _ascii_domain(domain)
    if domain is None:
        return None
    address = f"{local}@{domain}"
    return address if len(address) <= 254 else None


def normalize_phone(value, default_region="CN"):
    """The E.164 form (``+8613812345678``) of a valid phone number, or ``None``.

    Numbers without a country code are read in ``default_region`` (ISO 3166 code);
    with ``default_region=None`` only international numbers are accepted.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFKC", value).strip()
    if not text or len(text) > 64:
        return None
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return None
    # Valid, not merely possible: a junk number would only pollute OneID and audiences.
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def hash_identifier(normalized):
    """SHA-256 hex digest of a *normalised* identifier (the ad platforms' convention).

    ``None`` or an empty value gives ``None``, so ``hash_identifier(normalize_email(x))``
    is ``None`` for an invalid ``x`` instead of the hash of nothing.
    """
    if not normalized:
        return None
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def _normalize_id(value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Segment allows numeric userIds
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > MAX_ID_LENGTH:
        return None
    # Control characters (NUL above all, which PostgreSQL rejects) are never part of an id.
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        return None
    return text


def normalize_identity(kind, value, default_region="CN"):
    """Normalise ``value`` as an identifier of ``kind`` (one of :data:`IDENTITY_KINDS`).

    Returns the normalised string or ``None`` when the value is unusable. An unknown
    ``kind`` is a programming error and raises ``ValueError``.
    """
    if kind == "email":
        return normalize_email(value)
    if kind == "phone":
        return normalize_phone(value, default_region)
    if kind in IDENTITY_KINDS:
        return _normalize_id(value)
    raise ValueError(f"unknown identity kind {kind!r}")
