"""Sandboxed template rendering: results, filters, errors and injection payloads."""

import copy
import pickle
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from engine import render as R
from engine.render import TemplateProblem, render, render_message, validate

CNY = {"name": "CNY", "symbol": "¥", "position": "before", "decimals": 2}


def make_context(lines=3, name="Ada Lovelace"):
    return {
        "partner": {
            "id": 7, "name": name, "first_name": name.split(" ")[0],
            "email": "ada@example.com", "phone": "+8613812345678", "lang": "en_US",
            "tz": "Asia/Shanghai",
        },
        "company": {"name": "Shop", "website": "https://shop.example", "email": "", "phone": None},
        "cart": {
            "name": "S00042",
            "amount_total": 1234.5,
            "currency": CNY,
            "url": "https://shop.example/my/orders/42",
            "lines": [
                {
                    "product_name": f"Product {i}",
                    "quantity": 2.0,
                    "price_unit": 10.0 + i,
                    "price_subtotal": 2 * (10.0 + i),
                    "image_url": f"https://shop.example/web/image/{i}",
                    "url": f"https://shop.example/p/{i}",
                }
                for i in range(lines)
            ],
        },
        "unsubscribe_url": "https://shop.example/drip/unsubscribe?t=abc",
        "preferences_url": "https://shop.example/drip/preferences?t=abc",
    }


CART_TEMPLATE = """<p>Hi {{ partner.first_name }},</p>
<ul>
{% for line in cart.lines %}
  <li><a href="{{ line.url }}"><img src="{{ line.image_url }}" alt="{{ line.product_name }}"></a>
  {{ line.quantity | number }} × {{ line.price_unit | money(cart.currency) }}</li>
{% endfor %}
</ul>
<p>Total {{ cart.amount_total | money(cart.currency) }}</p>
<a href="{{ unsubscribe_url }}">Unsubscribe</a>"""


# --------------------------------------------------------------------------- basics


def test_cart_template_renders_many_times_from_cache():
    context = make_context(lines=3)
    before = R._compile.cache_info()
    outputs = {render(CART_TEMPLATE, context, lang="en_US") for _ in range(1000)}
    after = R._compile.cache_info()
    assert len(outputs) == 1
    out = outputs.pop()
    assert out.count("<li>") == 3
    for i in range(3):
        assert f'<img src="https://shop.example/web/image/{i}" alt="Product {i}">' in out
        assert f"2 × CN¥1{i}.00" in out
    assert "Total CN¥1,234.50" in out
    assert 'href="https://shop.example/drip/unsubscribe?t=abc"' in out
    # compiled once at most; every other render was a cache hit
    assert after.hits - before.hits >= 999
    assert after.misses - before.misses <= 1


def test_chinese_text_and_money_in_zh_cn():
    source = (
        "亲爱的{{ partner.name }}，您的购物车合计 {{ cart.amount_total | money(cart.currency) }}。"
    )
    context = make_context(name="张 伟")
    out = render(source, context, html=True, lang="zh_CN")
    assert out == "亲爱的张 伟，您的购物车合计 ¥1,234.50。"
    assert render(source, context, html=False, lang="zh_CN") == out


def test_html_mode_escapes_and_text_mode_does_not():
    context = make_context(name="<script>alert(1)</script> & co")
    html = render("Hello {{ partner.name }}", context, html=True)
    text = render("Hello {{ partner.name }}", context, html=False)
    assert html == "Hello &lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
    assert text == "Hello <script>alert(1)</script> & co"


@given(st.text(max_size=60))
def test_any_partner_name_is_escaped_exactly_once(name):
    context = {"partner": {"name": name}}
    assert render("{{ partner.name }}", context, html=True) == str(escape(name))
    assert render("{{ partner.name }}", context, html=False) == name


@given(st.text(alphabet=st.characters(blacklist_characters="{}%#\r\n"), max_size=80))
def test_text_without_template_syntax_renders_unchanged(text):
    assert render(text, {}, html=False) == text


def test_none_prints_as_empty_and_default_works():
    context = make_context()
    assert render("[{{ company.phone }}]", context) == "[]"
    assert render("[{{ partner.nickname | default('') }}]", context) == "[]"
    assert render("[{{ coupon.code | default('none') }}]", context) == "[none]"
    assert render("{% if coupon is defined %}yes{% else %}no{% endif %}", context) == "no"


def test_block_tags_leave_no_blank_lines_in_text():
    source = "Items:\n{% for line in cart.lines %}\n- {{ line.product_name }}\n{% endfor %}\nBye"
    out = render(source, make_context(lines=2), html=False)
    assert out == "Items:\n- Product 0\n- Product 1\nBye"


def test_loop_controls_are_available():
    out = render(
        "{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}
    )
    assert out == "012"


def test_context_is_not_mutated():
    context = make_context()
    snapshot = copy.deepcopy(context)
    render("{{ partner.name }}{{ cart.lines | length }}", context)
    assert context == snapshot
    assert "_drip_locale" not in context


# --------------------------------------------------------------------------- errors


def test_validate_accepts_good_templates():
    assert validate(CART_TEMPLATE) is None
    assert validate("Hi {{ partner.name }}", html=False) is None
    assert validate("") is None
    assert validate(None) is None


@pytest.mark.parametrize(
    ("source", "line", "column", "text"),
    [
        ("a\n{{ x }", 2, 6, "unexpected '}'"),
        ("x\n{{ x y }}", 2, 6, "expected token 'end of print statement', got 'y'"),
        ("a\n  {% endfor %}", 2, 6, "Encountered unknown tag 'endfor'."),
        ("{{ x ! }}", 1, 6, "unexpected char '!' at 5"),
        ("ok\n{{ total | monet }}", 2, 12, "No filter named 'monet'."),
        ("a\n{{ x } }}", 2, None, "unexpected '}'"),
    ],
)
def test_syntax_errors_have_line_and_column(source, line, column, text):
    with pytest.raises(TemplateProblem) as info:
        validate(source)
    problem = info.value
    assert (problem.line, problem.column, problem.message) == (line, column, text)
    # render reports the same problem
    with pytest.raises(TemplateProblem) as again:
        render(source, {})
    assert (again.value.line, again.value.message) == (line, text)


def test_unclosed_block_is_reported():
    with pytest.raises(TemplateProblem) as info:
        validate("{% for x in y %}\n{{ x }}")
    assert info.value.line == 2
    assert "endfor" in info.value.message


def test_problem_string_formats():
    assert str(TemplateProblem("unexpected '}'", 3)) == "Line 3: unexpected '}'"
    assert str(TemplateProblem("boom", 3, 7)) == "Line 3, column 7: boom"
    assert str(TemplateProblem("boom")) == "boom"
    assert str(TemplateProblem("boom", 4, part="body_html")) == "body_html, line 4: boom"
    assert str(TemplateProblem("boom", part="sms")) == "sms: boom"
    problem = TemplateProblem("boom", 4, 2).with_part("subject")
    assert (problem.part, problem.line, problem.column) == ("subject", 4, 2)
    copied = pickle.loads(pickle.dumps(problem))
    assert str(copied) == str(problem) == "subject, line 4, column 2: boom"


def test_undefined_variable_names_it_with_line():
    with pytest.raises(TemplateProblem) as info:
        render("Hello\n\n{{ cart.name }}", {"partner": {}})
    assert info.value.message == "'cart' is undefined"
    assert info.value.line == 3
    assert str(info.value) == "Line 3: 'cart' is undefined"


def test_undefined_key_and_falsy_test_raise():
    with pytest.raises(TemplateProblem, match="has no attribute 'nickname'"):
        render("{{ partner.nickname }}", make_context())
    with pytest.raises(TemplateProblem, match="'cart' is undefined"):
        render("{% if cart %}x{% endif %}", {})


def test_other_runtime_errors_are_wrapped():
    with pytest.raises(TemplateProblem) as info:
        render("a\n{{ 1 / 0 }}", {})
    assert info.value.message == "ZeroDivisionError: division by zero"
    assert info.value.line == 2
    with pytest.raises(TemplateProblem, match="not a number"):
        render("{{ 'abc' | money('EUR') }}", {})
    with pytest.raises(TemplateProblem, match="not a date"):
        render("{{ 'yesterday' | date }}", {})
    with pytest.raises(TemplateProblem, match="unknown time zone"):
        render("{{ '2024-05-01T10:00:00' | datetime(tz='Mars/Olympus') }}", {})
    with pytest.raises(TemplateProblem, match="too deeply"):
        render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {})


def test_include_and_extends_fail_cleanly():
    for source in ("{% include 'base.html' %}", "{% extends 'base.html' %}"):
        with pytest.raises(TemplateProblem):
            render(source, {})


# --------------------------------------------------------------------------- sandbox

INJECTIONS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ partner.env }}",
    "{{ partner.sudo() }}",
    "{{ partner.env['res.users'].search([]) }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__class__.__mro__}'.format(partner) }}",
    "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "{{ partner | attr('__class__') }}",
    "{{ cart.lines | map(attribute='__class__') | join(', ') }}",
    "{{ cart.lines.clear() }}",
    "{{ partner.setdefault('x', 1) }}",
    "{{ dict.mro() }}",
    "{{ cycler.mro() }}",
    "{{ config }}",
    "{{ request.application.__globals__ }}",
    "{{ partner.update({'name': 'x'}) }}",
    "{{ cart.lines.append(1) }}",
    "{{ cart.lines.pop() }}",
    "{% set x = partner.__dict__ %}{{ x }}",
    "{{ (1).__class__.__base__ }}",
    "{{ partner.items.__self__ }}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("html", [True, False])
def test_injection_payloads_fail_safely(payload, html):
    context = make_context()
    with pytest.raises(TemplateProblem) as info:
        render(payload, context, html=html)
    message = str(info.value)
    for leak in ("<class", "<module", "built-in", "<function", "globals()", "subprocess",
                 "uid=", "/usr/", "Traceback", "object at 0x"):
        assert leak not in message


def test_unsafe_attributes_in_filters_leak_nothing():
    # Printing a list shows its items' repr: the refused attributes stay undefined.
    out = render("{{ cart.lines | map(attribute='__class__') | list }}", make_context(1))
    assert out == "[Undefined]"


def test_mutation_attempts_leave_data_intact():
    context = make_context(lines=2)
    snapshot = copy.deepcopy(context)
    for payload in ("{{ cart.lines.pop() }}", "{{ partner.update({'a': 1}) }}",
                    "{{ cart.lines.append(1) }}", "{{ cart.lines.clear() }}"):
        with pytest.raises(TemplateProblem, match="is not allowed in templates"):
            render(payload, context)
    assert context == snapshot


def test_sandbox_message_is_readable():
    with pytest.raises(TemplateProblem) as info:
        render("{{ ''.__class__ }}", {})
    assert info.value.message == "access to attribute '__class__' is not allowed in templates"
    with pytest.raises(TemplateProblem) as info:
        render("{{ '{0.__class__}'.format(1) }}", {})
    assert "'__class__' is not allowed" in info.value.message


def test_safe_globals_still_work():
    out = render(
        "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}"
        "{% endfor %}{{ ns.n }}{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}"
        "{{ dict(a=1).a }}",
        {},
    )
    assert out == "6ab1"


def test_range_and_operator_caps():
    assert render("{{ range(10000) | length }}", {}) == "10000"
    with pytest.raises(TemplateProblem, match="10,000"):
        render("{{ range(10001) | length }}", {})
    assert render("{{ 'ab' * 3 }}{{ 2 ** 10 }}{{ 3 * 4 }}", {}) == "ababab102412"
    with pytest.raises(TemplateProblem, match="limited"):
        render("{{ 'a' * 10 ** 9 }}", {})
    with pytest.raises(TemplateProblem, match="limited"):
        render("{{ [1, 2] * 1000000 }}", {})
    with pytest.raises(TemplateProblem, match="too large"):
        render("{{ 10 ** 100000 }}", {})


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("lang", "currency", "expected"),
    [
        ("zh_CN", CNY, "¥1,234.50"),
        ("en_US", CNY, "CN¥1,234.50"),
        ("en_US", "EUR", "€1,234.50"),
        ("de_DE", "EUR", "1.234,50\xa0€"),
        ("en_US", {"name": "JPY", "decimals": 0}, "¥1,234"),
        ("en_US", {"name": "USD", "decimals": 3}, "$1,234.500"),
        ("en_US", {"name": "PTS", "symbol": "pts", "position": "after", "decimals": 0},
         "1,234\xa0pts"),
        ("de_DE", {"name": "XYZ", "symbol": "Ƀ", "position": "before", "decimals": 2},
         "Ƀ\xa01.234,50"),
        ("en_US", None, "1,234.50"),
    ],
)
def test_money(lang, currency, expected):
    out = render("{{ amount | money(currency) }}", {"amount": 1234.5, "currency": currency},
                 html=False, lang=lang)
    assert out == expected


def test_money_locale_override_and_strings():
    ctx = {"c": CNY}
    assert render("{{ '1234.5' | money(c, locale='zh_CN') }}", ctx, lang="en_US") == "¥1,234.50"


@given(
    st.decimals(min_value=-10**9, max_value=10**9, allow_nan=False, places=2),
    st.sampled_from(["zh_CN", "en_US", "fr_FR", "de_DE", "ja_JP", "ar_SA"]),
    st.sampled_from(["CNY", "EUR", "JPY", "USD", "ZZZ"]),
)
def test_money_always_formats(amount, lang, code):
    out = render("{{ a | money(c) }}", {"a": amount, "c": {"name": code, "symbol": "¤"}},
                 lang=lang)
    assert out and any(ch.isdigit() for ch in out)


def test_number():
    assert render("{{ 2.0 | number }}|{{ 1234.5 | number(2) }}", {}, lang="en_US") == \
        "2|1,234.50"
    assert render("{{ 1234.5 | number(1) }}", {}, lang="de_DE") == "1.234,5"


def test_dates_in_partner_time_zone_and_locale():
    context = {
        "partner": {"tz": "Asia/Shanghai"},
        "d": date(2024, 5, 1),
        "dt": datetime(2024, 5, 1, 20, 30),  # naive = UTC, Odoo's convention
        "aware": datetime(2024, 5, 1, 20, 30, tzinfo=ZoneInfo("UTC")),
    }
    assert render("{{ d | date }}", context, lang="zh_CN") == "2024年5月1日"
    assert render("{{ d | date('long') }}", context, lang="en_US") == "May 1, 2024"
    # 20:30 UTC is 04:30 the next day in Shanghai
    assert render("{{ dt | date('yyyy-MM-dd') }}", context) == "2024-05-02"
    assert render("{{ dt | datetime('yyyy-MM-dd HH:mm') }}", context) == "2024-05-02 04:30"
    assert render("{{ aware | datetime('HH:mm', tz='Europe/Paris') }}", context) == "22:30"
    assert render("{{ '2024-05-01T20:30:00Z' | datetime('HH:mm') }}", context) == "04:30"
    assert render("{{ '2024-05-01' | date('d MMM', locale='fr_FR') }}", context) == "1 mai"
    assert render("{{ dt | datetime('HH:mm') }}", {"dt": context["dt"]}) == "20:30"


def test_truncate_words():
    assert render("{{ t | truncate_words(3) }}", {"t": "one two three four"}, html=False) == \
        "one two three…"
    assert render("{{ t | truncate_words(4) }}", {"t": "one two three four"}, html=False) == \
        "one two three four"
    assert render("{{ t | truncate_words(1, '...') }}", {"t": "a b"}, html=False) == "a..."


def test_unknown_language_falls_back():
    assert render("{{ 1234.5 | number(1) }}", {}, lang="xx_YY") == "1,234.5"
    assert render("{{ 1234.5 | number(1) }}", {}, lang="sr@latin") == "1.234,5"
    assert render("{{ 1234.5 | number(1) }}", {}, lang=None) == "1,234.5"


# --------------------------------------------------------------------------- messages


def test_render_message_modes_per_part():
    context = make_context(name="<Bob>")
    parts = {
        "subject": "Your cart, {{ partner.name }}",
        "body_html": "<p>{{ partner.name }}</p>",
        "body_text": "{{ partner.name }}",
        "sms": "{{ partner.name }}: {{ cart.amount_total | money(cart.currency) }}",
    }
    out = render_message(parts, context, "zh_CN")
    assert out == {
        "subject": "Your cart, <Bob>",
        "body_html": "<p>&lt;Bob&gt;</p>",
        "body_text": "<Bob>",
        "sms": "<Bob>: ¥1,234.50",
    }


def test_render_message_names_failing_part():
    parts = {"subject": "ok", "body_html": "<p>\n\n\n{{ cart.nme }}</p>"}
    with pytest.raises(TemplateProblem) as info:
        render_message(parts, make_context(), "en_US")
    assert info.value.part == "body_html"
    assert str(info.value) == "body_html, line 4: 'dict object' has no attribute 'nme'"
    with pytest.raises(TemplateProblem) as info:
        render_message({"subject": "{{ x }"}, {}, "en_US")
    assert str(info.value).startswith("subject, line 1, column 6: unexpected '}'")


def test_render_message_rejects_unknown_parts():
    with pytest.raises(ValueError, match="body"):
        render_message({"body": "x"}, {}, "en_US")
