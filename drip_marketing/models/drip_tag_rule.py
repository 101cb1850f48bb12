from odoo import _, api, fields, models
from odoo.tools import SQL

from .domain_tools import checked_domain


def _release_sql(rule_id, tag_id, keep=None):
    """Drop a rule's ownership of its customers (all, or those not in the ``keep``
    subquery) and their tag, unless another rule with the same tag still owns it."""
    outside = SQL("AND o.partner_id NOT IN %s", keep) if keep is not None else SQL()
    return SQL(
        """
        WITH gone AS (
            DELETE FROM drip_tag_rule_partner_rel o
             WHERE o.rule_id = %(rule)s %(outside)s
            RETURNING o.partner_id
        )
        DELETE FROM res_partner_res_partner_category_rel r
         USING gone
         WHERE r.category_id = %(tag)s AND r.partner_id = gone.partner_id
           AND NOT EXISTS (SELECT 1 FROM drip_tag_rule_partner_rel o
                             JOIN drip_tag_rule other ON other.id = o.rule_id
                            WHERE other.tag_id = %(tag)s AND o.rule_id != %(rule)s
                              AND o.partner_id = gone.partner_id)
        """,
        rule=rule_id, tag=tag_id, outside=outside,
    )


class DripTagRule(models.Model):
    """'Customers matching this filter carry this tag' — kept in sync by a cron."""

    _name = "drip.tag.rule"
    _description = "Drip Marketing Tag Rule"
    _order = "sequence, id"

    name = fields.Char(required=True, translate=True)
    active = fields.Boolean(default=True)
    sequence = fields.Integer(default=10)
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, index=True
    )
    tag_id = fields.Many2one("res.partner.category", string="Tag", required=True)
    domain = fields.Char(string="Filter", default="[]", required=True)
    tagged_partner_ids = fields.Many2many(
        "res.partner",
        "drip_tag_rule_partner_rel",
        "rule_id",
        "partner_id",
        readonly=True,
        copy=False,
        help="Customers this rule tagged: only they are untagged when they stop matching, "
        "so tags set by hand are never removed.",
    )
    synced_at = fields.Datetime(readonly=True, copy=False)

    @api.constrains("domain")
    def _check_domain(self):
        for rule in self:
            checked_domain(
                self.env, "res.partner", rule.domain, _("The filter of tag rule '%s'", rule.name)
            )

    def write(self, vals):
        # A rule that stops asserting its tag (archived, or now about another tag) first
        # gives back the tags it added; the next sync applies the new definition.
        if "tag_id" in vals or vals.get("active") is False:
            self._release_tags()
        return super().write(vals)

    def unlink(self):
        self._release_tags()
        return super().unlink()

    def action_sync(self):
        self._sync_tags()
        return True

    def _partner_query(self):
        """The SQL subquery of the customers this rule matches now."""
        self.ensure_one()
        domain = checked_domain(
            self.env, "res.partner", self.domain, _("The filter of tag rule '%s'", self.name)
        )
        partners = self.env["res.partner"].with_context(active_test=False)
        return partners._search(
            domain + [("company_id", "in", (False, self.company_id.id))]
        ).subselect()

    def _sync_tags(self, now=None):
        """Tag customers who match, untag those who stopped matching — set-based.

        Two statements per rule, whatever the number of customers. Ownership is kept in
        ``tagged_partner_ids``: a rule records a customer when it adds the tag, or when
        the tag on that customer is already owned by another rule with the same tag.
        A tag a user set by hand is never recorded, so never removed. A tag owned by
        several rules stays until the last of them lets go. Newly tagged customers get a
        ``tag_added`` event that journeys can trigger on.
        """
        now = now or fields.Datetime.now()
        event_type = self.env.ref("drip_marketing.event_type_tag_added")
        self.env["res.partner"].flush_model()
        self.env["drip.event"].flush_model()
        self.flush_model()
        for rule in self:
            members = rule._partner_query()
            params = {
                "rule": rule.id, "tag": rule.tag_id.id, "members": members,
                "company": rule.company_id.id, "type": event_type.id, "now": now,
                "uid": self.env.uid,
                "name": _("Tag added: %s", rule.tag_id.name),
            }
            self.env.cr.execute(SQL(
                """
                WITH matching AS (
                    SELECT p.id FROM res_partner p WHERE p.id IN %(members)s
                ), added AS (
                    INSERT INTO res_partner_res_partner_category_rel (category_id, partner_id)
                    SELECT %(tag)s, m.id FROM matching m
                     WHERE NOT EXISTS (SELECT 1 FROM res_partner_res_partner_category_rel r
                                        WHERE r.category_id = %(tag)s AND r.partner_id = m.id)
                    RETURNING partner_id
                ), owned AS (
                    INSERT INTO drip_tag_rule_partner_rel (rule_id, partner_id)
                    SELECT %(rule)s, m.id FROM matching m
                     WHERE NOT EXISTS (SELECT 1 FROM drip_tag_rule_partner_rel o
                                        WHERE o.rule_id = %(rule)s AND o.partner_id = m.id)
                       AND (m.id IN (SELECT partner_id FROM added)
                            OR EXISTS (SELECT 1 FROM drip_tag_rule_partner_rel o
                                         JOIN drip_tag_rule other ON other.id = o.rule_id
                                        WHERE other.tag_id = %(tag)s AND o.partner_id = m.id))
                )
                INSERT INTO drip_event (name, event_type_id, partner_id, company_id, call_type,
                                        occurred_at, received_at, payload, processed,
                                        create_uid, create_date, write_uid, write_date)
                SELECT %(name)s, %(type)s, added.partner_id, %(company)s, 'internal',
                       %(now)s, %(now)s,
                       jsonb_build_object('tag_id', %(tag)s, 'rule_id', %(rule)s),
                       TRUE, %(uid)s, %(now)s, %(uid)s, %(now)s
                  FROM added
                """,
                **params,
            ))
            self.env.cr.execute(_release_sql(rule.id, rule.tag_id.id, keep=members))
        self.write({"synced_at": now})
        self.invalidate_model(["tagged_partner_ids"])
        self.env["res.partner"].invalidate_model(["category_id"])
        self.env["res.partner.category"].invalidate_model()
        self.env["drip.event"].invalidate_model()

    def _release_tags(self):
        """Remove the tags these rules added (unless another rule still owns them)."""
        self.flush_model()
        for rule in self.filtered("tagged_partner_ids"):
            self.env.cr.execute(_release_sql(rule.id, rule.tag_id.id))
        self.invalidate_model(["tagged_partner_ids"])
        self.env["res.partner"].invalidate_model(["category_id"])

    @api.model
    def _cron_sync_tags(self):
        """Sync every active rule; each rule is two statements, so one run does them all."""
        rules = self.search([("active", "=", True)])
        rules._sync_tags()
        self.env["ir.cron"]._notify_progress(done=len(rules), remaining=0)
