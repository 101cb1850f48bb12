"""Validation of domains typed by store admins (journeys, steps, segments, tag rules)."""

from odoo import _
from odoo.exceptions import ValidationError
from odoo.tools.safe_eval import safe_eval


def checked_domain(env, model_name, domain_text, label):
    """Return the domain as a list, or raise a ValidationError naming ``label``.

    The domain is also tried with a ``search_count(limit=1)`` so unknown fields and bad
    operators are reported when the admin saves, not when a cron runs at night.
    """
    try:
        domain = safe_eval(domain_text or "[]")
        if not isinstance(domain, list | tuple):
            raise ValueError(_("a filter must be a list of conditions"))
        env[model_name].with_context(active_test=False).search_count(list(domain), limit=1)
    except Exception as error:  # noqa: BLE001 - any failure here comes from user input
        raise ValidationError(
            _("%(label)s is not a valid filter: %(error)s", label=label, error=error)
        ) from error
    return list(domain)
