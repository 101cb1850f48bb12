"""Safe Jinja2 rendering of message templates over plain data.

Templates are written by store admins in the backend and rendered by workers for
every message, so rendering must be safe, fast and explain its failures:

* Rendering uses a Jinja2 ``ImmutableSandboxedEnvironment`` (no access to ``_``-prefixed
  attributes, to Python internals, nor to methods that mutate lists/dicts) over **plain
  data** (dicts, lists, strings, numbers, dates) — never ORM records.
* There are two cached environments: HTML (autoescape on, for ``body_html``) and text
  (autoescape off, for subjects, plain-text bodies and SMS).
* An undefined name or key raises (a typo must not send "Hello ,"), except through
  ``default`` / ``is defined``: ``{{ partner.nickname | default('') }}`` and
  ``{{ coupon.code | default('') }}`` (no coupon at all) work.
  ``None`` prints as an empty string.
* Block tags swallow their own line (``trim_blocks`` + ``lstrip_blocks``), so a
  ``{% for %}`` in a plain-text body or SMS leaves no blank lines; ``{% break %}`` and
  ``{% continue %}`` are available.
* Compiled templates are kept in an LRU cache keyed by (mode, source): compiling costs
  milliseconds, rendering a compiled template a fraction of one.
* Every failure raises :class:`TemplateProblem` with a line (and a column when it can be
  found) and a message that reveals nothing of the server's internals.

Context provided by the Odoo side (``drip.delivery._render_context``)
--------------------------------------------------------------------

=====================  =====================================================================
key                    content
=====================  =====================================================================
``partner``            ``{id, name, first_name, email, phone, lang, tz}``
``company``            ``{name, website, email, phone}``
``order`` / ``cart``   ``{name, amount_total, currency, url, lines}``; ``currency`` is
                       ``{name, symbol, position, decimals}``; each line is
                       ``{product_name, quantity, price_unit, price_subtotal, image_url, url}``
``unsubscribe_url``    signed one-click unsubscribe link
``preferences_url``    signed preference-page link
``recommendations``    list of ``{name, url, image_url, price, currency}`` (may be empty)
``coupon``             ``{code, expires_at}`` when the step issues one
``journey``            ``{name}``
``step``               ``{name}``
=====================  =====================================================================

Keys may be missing (no order for a welcome message): test them with
``{% if cart is defined %}`` or use ``default``.

Filters (locale-aware through Babel; the locale defaults to the ``lang`` given to
:func:`render`, e.g. ``zh_CN``):

* ``money(amount, currency=None, locale=None)`` — ``currency`` is an ISO code or the dict
  above; ``{{ cart.amount_total | money(cart.currency) }}`` → ``¥1,234.50`` in ``zh_CN``.
* ``number(value, decimals=None, locale=None)`` — ``{{ line.quantity | number }}`` → ``2``.
* ``date(value, format="medium", tz=None, locale=None)`` and
  ``datetime(value, format="medium", tz=None, locale=None)`` — ``value`` is a ``date``,
  ``datetime`` or ISO string; ``format`` is ``short|medium|long|full`` or a CLDR pattern
  (``yyyy-MM-dd HH:mm``). Naive datetimes are UTC (Odoo's convention); they are shown in
  ``tz``, else the partner's ``tz`` from the context, else UTC.
* ``truncate_words(text, count=30, end="…")``.

Limits: ``range`` yields at most 10,000 items and ``*`` / ``**`` refuse the obvious
memory bombs (``'a' * 10**9``). The sandbox guards data and code, it is not a resource
limiter: a deliberately heavy template (nested loops, huge format widths) can still burn
CPU and memory, so delivery jobs run under the worker's time and memory limits.
"""

import functools
import math
import re
from collections import abc
from collections.abc import Mapping
from datetime import date as date_type
from datetime import datetime as datetime_type
from decimal import Decimal, InvalidOperation

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    TemplateSyntaxError,
    UndefinedError,
    pass_context,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

__all__ = [
    "MESSAGE_PARTS",
    "TemplateProblem",
    "render",
    "render_message",
    "validate",
]

# Which parts of a message are HTML (autoescaped) and which are plain text.
MESSAGE_PARTS = {"subject": False, "body_html": True, "body_text": False, "sms": False}

MAX_RANGE = 10_000
# Longest sequence `*` may build, and largest integer `**` may build (in bits).
MAX_SEQUENCE = 100_000
MAX_POWER_BITS = 4096
CACHE_SIZE = 512
# Context key through which the filters learn the default locale of this render.
_LOCALE_KEY = "_drip_locale"
_MESSAGE_LIMIT = 300


class TemplateProblem(Exception):
    """A template that cannot be compiled or rendered, with where and why.

    ``line`` and ``column`` are 1-based and may be ``None`` when unknown; ``part``
    names the message part (``subject``, ``body_html``…) when known.
    """

    def __init__(self, message, line=None, column=None, part=None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.part = part

    def __reduce__(self):  # keep line/column/part through pickling (RQ, multiprocessing)
        return (TemplateProblem, (self.message, self.line, self.column, self.part))

    def with_part(self, part):
        """The same problem, attributed to the message part ``part``."""
        return TemplateProblem(self.message, self.line, self.column, part)

    def __str__(self):
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
            if self.column is not None:
                where.append(f"column {self.column}")
        prefix = ", ".join(where)
        if self.part:
            prefix = f"{self.part}, {prefix}" if prefix else self.part
        elif prefix:
            prefix = prefix[0].upper() + prefix[1:]
        return f"{prefix}: {self.message}" if prefix else self.message


# --------------------------------------------------------------------------- locale


@functools.lru_cache(maxsize=64)
def _locale(lang):
    """Babel locale for an Odoo language code; en_US when unknown, never an error."""
    candidates = []
    if lang:
        code = str(lang).replace("-", "_")
        # Odoo spells Serbian Latin "sr@latin"; Babel wants a script subtag.
        code = code.replace("@latin", "_Latn")
        candidates += [code, code.split("_")[0]]
    for candidate in [*candidates, "en_US"]:
        try:
            return Locale.parse(candidate)
        except (UnknownLocaleError, ValueError):
            continue
    raise AssertionError("Babel has no en_US locale")  # pragma: no cover


def _context_locale(context, locale):
    return _locale(locale or context.get(_LOCALE_KEY) or "en_US")


# --------------------------------------------------------------------------- filters


def _decimal(value):
    if isinstance(value, bool):
        raise TypeError("expected a number, got a boolean")
    if isinstance(value, (int, float, Decimal)):
        return value
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{str(value)[:40]!r} is not a number") from None


def _with_decimals(pattern, decimals):
    """A Babel number pattern with exactly ``decimals`` fraction digits."""
    fraction = "." + "0" * decimals if decimals > 0 else ""
    return re.sub(r"0(?:\.[0#]+)?(?=[^0#.,]|$)", "0" + fraction, pattern)


# Babel parses patterns and scans its currency list on every call; messages format the
# same few currencies in the same few locales over and over, so both are cached.
@functools.lru_cache(maxsize=256)
def _known_currency(code):
    return babel_numbers.is_currency(code)


@functools.lru_cache(maxsize=256)
def _pattern(lang, decimals, currency):
    """The locale's currency (or plain number) pattern with ``decimals`` fraction digits."""
    loc = _locale(lang)
    base = loc.currency_formats["standard"].pattern if currency else "#,##0.0"
    return babel_numbers.parse_pattern(_with_decimals(base, decimals))


@pass_context
def money_filter(context, amount, currency=None, locale=None):
    """Format ``amount`` in ``currency`` (ISO code or currency dict) for the locale.

    Known ISO codes follow the locale's own conventions (CLDR), which may show a
    disambiguated symbol such as ``CN¥`` outside China; the dict's ``decimals`` wins
    over the ISO default. Codes Babel does not know use the dict's symbol and position.
    """
    loc = _context_locale(context, locale)
    amount = _decimal(amount)
    info = currency if isinstance(currency, Mapping) else {"name": currency or ""}
    code = str(info.get("name") or "").upper()
    decimals = info.get("decimals")
    if code and _known_currency(code):
        if decimals is None:
            return loc.currency_formats["standard"].apply(amount, loc, currency=code)
        return _pattern(str(loc), int(decimals), True).apply(
            amount, loc, currency=code, currency_digits=False
        )
    decimals = 2 if decimals is None else int(decimals)
    number = _pattern(str(loc), decimals, False).apply(amount, loc)
    symbol = info.get("symbol") or code
    if not symbol:
        return number
    # Odoo's own layout for currencies it knows and Babel does not.
    if info.get("position") == "after":
        return f"{number}\N{NO-BREAK SPACE}{symbol}"
    return f"{symbol}\N{NO-BREAK SPACE}{number}"


@pass_context
def number_filter(context, value, decimals=None, locale=None):
    """Format a number with the locale's separators; ``decimals`` fixes the precision."""
    loc = _context_locale(context, locale)
    value = _decimal(value)
    if decimals is None:
        return loc.decimal_formats[None].apply(value, loc)
    return _pattern(str(loc), int(decimals), False).apply(value, loc)


def _timezone(context, tz):
    if not tz:
        partner = context.get("partner")
        tz = partner.get("tz") if isinstance(partner, Mapping) else None
    try:
        return babel_dates.get_timezone(tz or "UTC")
    except LookupError:
        raise ValueError(f"unknown time zone {str(tz)[:40]!r}") from None


def _as_datetime_or_date(value):
    if isinstance(value, (datetime_type, date_type)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) <= 10:
                return date_type.fromisoformat(text)
            # Python 3.10 (Odoo 18's minimum) does not read a "Z" suffix.
            return datetime_type.fromisoformat(text.replace("Z", "+00:00"))  # noqa: FURB162
        except ValueError:
            pass
    raise ValueError(f"{str(value)[:40]!r} is not a date")


@pass_context
def date_filter(context, value, format="medium", tz=None, locale=None):
    """Format a date (a datetime is first moved to ``tz`` / the partner's time zone)."""
    loc = _context_locale(context, locale)
    value = _as_datetime_or_date(value)
    if isinstance(value, datetime_type):
        if value.tzinfo is None:  # Odoo stores naive UTC
            value = babel_dates.UTC.localize(value)
        value = value.astimezone(_timezone(context, tz)).date()
    return babel_dates.format_date(value, format=format, locale=loc)


@pass_context
def datetime_filter(context, value, format="medium", tz=None, locale=None):
    """Format a datetime in ``tz`` (default: the partner's time zone, else UTC)."""
    loc = _context_locale(context, locale)
    value = _as_datetime_or_date(value)
    if not isinstance(value, datetime_type):
        value = datetime_type(value.year, value.month, value.day)
    # Babel reads naive datetimes as UTC, as Odoo stores them.
    return babel_dates.format_datetime(
        value, format=format, tzinfo=_timezone(context, tz), locale=loc
    )


def truncate_words(value, count=30, end="…"):
    """At most ``count`` whitespace-separated words, then ``end`` if anything was cut."""
    text = value.striptags() if isinstance(value, Markup) else str(value)
    words = text.split()
    if len(words) <= count:
        return text
    return " ".join(words[: max(int(count), 0)]) + end


def _safe_range(*args):
    values = range(*args)
    if len(values) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE:,} items in templates")
    return values


# --------------------------------------------------------------------------- environment


# Methods that mutate the caller's data. Jinja 3.1.2's immutable sandbox forgets
# list.pop and list.clear, so the full list is kept here.
_MUTATORS = (
    (abc.MutableSequence, frozenset(
        ["append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"])),
    (abc.MutableMapping, frozenset(["clear", "pop", "popitem", "setdefault", "update"])),
    (abc.MutableSet, frozenset(
        ["add", "clear", "difference_update", "discard", "intersection_update", "pop",
         "remove", "symmetric_difference_update", "update"])),
)


class _DripEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with friendlier refusals and caps on memory-hungry operators."""

    intercepted_binops = frozenset(["*", "**"])

    def is_safe_attribute(self, obj, attr, value):
        if not super().is_safe_attribute(obj, attr, value):
            return False
        return not any(
            isinstance(obj, types) and attr in names for types, names in _MUTATORS
        )

    def unsafe_undefined(self, obj, attribute):
        return self.undefined(
            f"access to attribute {attribute!r} is not allowed in templates",
            name=attribute,
            obj=obj,
            exc=SecurityError,
        )

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(times, int)
                    and len(seq) * max(times, 0) > MAX_SEQUENCE
                ):
                    raise SecurityError(
                        f"a repeated sequence is limited to {MAX_SEQUENCE:,} items"
                    )
            return left * right
        if operator == "**":
            if (
                isinstance(left, int) and isinstance(right, int)
                and abs(left) > 1 and right > 0
                and right * math.log2(abs(left)) > MAX_POWER_BITS
            ):
                raise SecurityError("this power is too large for a template")
            return left**right
        return super().call_binop(context, operator, left, right)


class _Undefined(ChainableUndefined, StrictUndefined):
    """Fails when printed, iterated or tested, but lets ``default`` / ``is defined``
    reach through a missing parent: ``{{ coupon.code | default('') }}`` without a coupon.
    """

    __slots__ = ()


def _finalize(value):
    # A missing optional field (phone, website) prints as nothing, not "None".
    return "" if value is None else value


def _make_environment(html):
    env = _DripEnvironment(
        autoescape=html,
        undefined=_Undefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        cache_size=0,  # our own LRU below is keyed by source; Jinja's would be unused
    )
    # lipsum is useless in messages; range gets a tighter cap than Jinja's 100,000.
    env.globals.pop("lipsum", None)
    env.globals["range"] = _safe_range
    env.filters.update(
        money=money_filter,
        number=number_filter,
        date=date_filter,
        datetime=datetime_filter,
        truncate_words=truncate_words,
    )
    return env


_ENVIRONMENTS = {True: _make_environment(True), False: _make_environment(False)}


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compile(html, source):
    return _ENVIRONMENTS[html].from_string(source)


# --------------------------------------------------------------------------- errors

_QUOTED_TOKEN = re.compile(r"(?:unexpected|got|tag|named) '([^']+)'")
_CHAR_AT = re.compile(r"unexpected char .+ at (\d+)$")


def _guess_column(source, line, message):
    """Best-effort 1-based column of a syntax error, or None when unsure."""
    match = _CHAR_AT.search(message)
    if match:
        pos = int(match.group(1))
        if 0 <= pos < len(source) and source.count("\n", 0, pos) + 1 == line:
            return pos - (source.rfind("\n", 0, pos) + 1) + 1
        return None
    match = _QUOTED_TOKEN.search(message)
    lines = source.splitlines()
    if not match or not line or line > len(lines):
        return None
    text, token = lines[line - 1], match.group(1)
    # Only when the token occurs once on the line: a wrong column is worse than none.
    if text.count(token) == 1:
        return text.index(token) + 1
    return None


def _syntax_problem(error, source):
    message = error.message or "syntax error"
    return TemplateProblem(message, error.lineno, _guess_column(source, error.lineno, message))


def _template_line(error):
    # Jinja rewrites tracebacks so template frames carry the template's line numbers.
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _runtime_problem(error):
    if isinstance(error, (UndefinedError, SecurityError)):
        message = str(error)
        if message.endswith("is not safely callable"):
            message = "calling this object is not allowed in templates"
    elif isinstance(error, RecursionError):
        message = "the template calls itself too deeply"
    else:
        message = f"{type(error).__name__}: {error}"
    if len(message) > _MESSAGE_LIMIT:
        message = message[: _MESSAGE_LIMIT - 1] + "…"
    return TemplateProblem(message, _template_line(error))


# --------------------------------------------------------------------------- API


def _template(source, html):
    try:
        return _compile(bool(html), source or "")
    except TemplateSyntaxError as error:
        raise _syntax_problem(error, source or "") from None


def validate(source, *, html=True):
    """Check that ``source`` compiles; raise :class:`TemplateProblem` if it does not.

    Unknown filters and tests are reported too (Jinja checks them at compile time).
    Returns ``None``.
    """
    _template(source, html)


def render(source, context, *, html=True, lang="en_US"):
    """Render ``source`` over the plain-data ``context`` and return the text.

    ``html`` selects autoescaping; ``lang`` is the default locale of the money and date
    filters. Any failure — syntax, undefined name, sandbox refusal, a filter's error —
    raises :class:`TemplateProblem`.
    """
    template = _template(source, html)
    variables = dict(context or {})
    variables[_LOCALE_KEY] = lang or "en_US"
    try:
        return template.render(variables)
    except TemplateSyntaxError as error:  # e.g. a syntax error raised while rendering
        raise _syntax_problem(error, source or "") from None
    except Exception as error:  # noqa: BLE001 - any failure of a template is its problem
        raise _runtime_problem(error) from None


def render_message(parts, context, lang="en_US"):
    """Render each part of a message (``subject``, ``body_html``, ``body_text``, ``sms``).

    Returns a dict with the same keys. ``body_html`` is rendered with autoescaping, the
    other parts as plain text. The first failing part raises :class:`TemplateProblem`
    naming that part.
    """
    unknown = set(parts) - set(MESSAGE_PARTS)
    if unknown:
        raise ValueError(f"unknown message part(s): {', '.join(sorted(unknown))}")
    rendered = {}
    for part, source in parts.items():
        try:
            rendered[part] = render(source, context, html=MESSAGE_PARTS[part], lang=lang)
        except TemplateProblem as problem:
            raise problem.with_part(part) from None
    return rendered
