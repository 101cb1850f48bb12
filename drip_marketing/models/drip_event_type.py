from odoo import _, api, fields, models, tools
from odoo.exceptions import ValidationError


class DripEventType(models.Model):
    _name = "drip.event.type"
    _description = "Drip Marketing Event Type"
    _order = "name"

    name = fields.Char(required=True, translate=True)
    code = fields.Char(
        required=True,
        help="Technical name used by the event API, e.g. product_viewed.",
    )
    external_names = fields.Char(
        string="Also received as",
        help="Comma-separated event names of other tools mapped to this type, e.g. "
        "Segment's 'Product Viewed'.",
    )
    is_internal = fields.Boolean(
        help="Recorded by Odoo itself (order confirmed, RFM segment changed…), not "
        "accepted from the API."
    )
    active = fields.Boolean(default=True)
    event_count = fields.Integer(compute="_compute_event_count")

    _sql_constraints = [
        ("code_unique", "UNIQUE(code)", "An event type with this technical name exists."),
    ]

    @api.constrains("code")
    def _check_code(self):
        for event_type in self:
            code = event_type.code or ""
            if not code.replace("_", "").isalnum() or code.lower() != code or len(code) > 64:
                raise ValidationError(
                    _("The technical name '%s' may only use lower-case letters, digits and "
                      "underscores (64 at most).", code)
                )

    def _compute_event_count(self):
        counts = dict(
            self.env["drip.event"]._read_group(
                [("event_type_id", "in", self.ids)], ["event_type_id"], ["__count"]
            )
        )
        for event_type in self:
            event_type.event_count = counts.get(event_type, 0)

    @api.model
    def _by_name(self, names):
        """Map codes and external names to types in one query."""
        types = self.search([])
        mapping = {}
        for event_type in types:
            mapping[event_type.code] = event_type
            for alias in (event_type.external_names or "").split(","):
                if alias.strip():
                    mapping[alias.strip()] = event_type
        return {name: mapping.get(name) for name in names}

    # Ingestion resolves names on every request: a cached map, cleared on any change.
    @api.model_create_multi
    def create(self, vals_list):
        self.env.registry.clear_cache()
        return super().create(vals_list)

    def write(self, vals):
        if {"code", "external_names", "active", "is_internal"} & vals.keys():
            self.env.registry.clear_cache()
        return super().write(vals)

    def unlink(self):
        self.env.registry.clear_cache()
        return super().unlink()

    @api.model
    def _ingest_types(self, names):
        """{name: (type id, is internal) or None} for the event API and Segment calls.

        The same mapping as :meth:`_by_name`, from a per-process cache (no query): codes
        and their other names of the active types.
        """
        mapping = self._ingest_type_map()
        return {name: mapping.get(name) for name in names}

    @tools.ormcache()
    def _ingest_type_map(self):
        mapping = {}
        for event_type in self.sudo().search([]):
            entry = (event_type.id, event_type.is_internal)
            for alias in (event_type.external_names or "").split(","):
                if alias.strip():
                    mapping.setdefault(alias.strip(), entry)
            mapping[event_type.code] = entry
        return mapping
