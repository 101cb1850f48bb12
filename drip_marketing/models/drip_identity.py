from odoo import _, api, fields, models
from odoo.exceptions import ValidationError
from odoo.tools.sql import create_index

from ..engine import identity as identity_engine

IDENTITY_KINDS = [
    ("email", "Email"),
    ("phone", "Phone (E.164)"),
    ("user_id", "User id"),
    ("anonymous_id", "Anonymous id"),
    ("wechat_unionid", "WeChat UnionID"),
    ("wechat_openid", "WeChat OpenID"),
    ("external", "External id"),
]


class DripIdentity(models.Model):
    """One identifier of one person (the OneID every inbound event resolves through)."""

    _name = "drip.identity"
    _description = "Drip Marketing Customer Identity"
    _order = "partner_id, kind, id"
    _rec_name = "value"

    partner_id = fields.Many2one(
        "res.partner", string="Customer", required=True, ondelete="cascade", index=True
    )
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, index=True
    )
    kind = fields.Selection(IDENTITY_KINDS, required=True)
    value = fields.Char(required=True, help="Normalised: lower-case email, E.164 phone.")
    source_id = fields.Many2one("drip.source", ondelete="set null")
    first_seen_at = fields.Datetime(default=fields.Datetime.now)
    last_seen_at = fields.Datetime(default=fields.Datetime.now)

    _sql_constraints = [
        (
            "identity_unique",
            "UNIQUE(company_id, kind, value)",
            "This identifier already belongs to a customer of this company.",
        ),
    ]

    @api.model_create_multi
    def create(self, vals_list):
        for vals in vals_list:
            vals["value"] = self._normalized(vals.get("kind"), vals.get("value"))
        return super().create(vals_list)

    def write(self, vals):
        if "value" in vals or "kind" in vals:
            for identity in self:
                kind = vals.get("kind", identity.kind)
                super(DripIdentity, identity).write(
                    dict(vals, value=self._normalized(kind, vals.get("value", identity.value)))
                )
            return True
        return super().write(vals)

    @api.model
    def _normalized(self, kind, value):
        normalized = identity_engine.normalize_identity(kind, value)
        if not normalized:
            raise ValidationError(
                _("'%(value)s' is not a valid %(kind)s.", value=value,
                  kind=dict(IDENTITY_KINDS).get(kind, kind))
            )
        return normalized


class DripIdentityConflict(models.Model):
    """An identifier claimed by two customers: never merged silently, reviewed by a user."""

    _name = "drip.identity.conflict"
    _description = "Drip Marketing Identity Conflict"
    _order = "create_date desc, id desc"

    kind = fields.Selection(IDENTITY_KINDS, required=True)
    value = fields.Char(required=True)
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company
    )
    partner_id = fields.Many2one(
        "res.partner", string="Holder", required=True, ondelete="cascade"
    )
    other_partner_id = fields.Many2one(
        "res.partner", string="Claimed by", required=True, ondelete="cascade"
    )
    event_id = fields.Many2one("drip.event", ondelete="set null")
    state = fields.Selection(
        [("open", "To review"), ("merged", "Merged"), ("dismissed", "Dismissed")],
        default="open",
        required=True,
    )

    def init(self):
        # Ingestion records a conflict unless the same one is open: an index probe per
        # conflict of a batch (drip.ingest._record_conflicts), not a scan of them all.
        create_index(self.env.cr, "drip_identity_conflict_open_pair_idx", self._table,
                     ["company_id", "kind", "value", "partner_id", "other_partner_id"],
                     where="state = 'open'")

    def action_merge(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "res_model": "base.partner.merge.automatic.wizard",
            "view_mode": "form",
            "target": "new",
            "context": {
                "active_model": "res.partner",
                "active_ids": (self.partner_id | self.other_partner_id).ids,
                "default_dst_partner_id": self.partner_id.id,
            },
        }

    def action_dismiss(self):
        self.write({"state": "dismissed"})
        return True
