"""Set-based refreshes of the predictions stored on customers.

Three scheduled actions, each working through the partner table in id ranges (bounded
batches that commit between calls, ``ir.cron._notify_progress``), each a thin adapter:
SQL aggregates the facts, ``engine/`` decides, one ``UPDATE … FROM unnest(…)`` writes the
rows whose value changed.

* **Engagement score** (``engine/scoring.py``): decayed points of opens, clicks, replies,
  bounces, unsubscribes (the message ledger), product views and cart adds (events, carts)
  and orders. Incremental: customers with a fact recorded since the last pass are
  recomputed from their history; everybody else decays in closed form, without drift
  (the stored score and its time are the anchor of the exponential). Upward threshold
  crossings become ``score_crossed`` events (journeys trigger on them) and, at the hand-off
  threshold, a task for the salesperson (``_handoff``; the CRM bridge makes opportunities).
* **Buy till you die** (``engine/btyd.py``): BG/NBD fitted per company over grouped
  (x, t_x, T) triples, then P(alive), expected orders in 90 days, the predicted next
  order and the churn risk per customer.
* **Best time** (``engine/besttime.py``): the store's hour-of-week pattern, then each
  customer's own histogram and best hour.
"""

import json
import logging
import math
from collections import defaultdict
from datetime import timedelta

import numpy as np
from markupsafe import Markup

from odoo import _, api, fields, models
from odoo.tools import SQL

from ..engine import besttime, btyd, scoring

_logger = logging.getLogger(__name__)

# Partners per cron call: each call stays well inside the cron time limit on a large
# database and commits its work (the cron re-runs at once while work remains).
BATCH_SIZE = 100000
# A full engagement recomputation from the history at least this often, to catch what
# the incremental passes cannot see (deleted orders or messages).
FULL_ENGAGEMENT_EVERY_DAYS = 7
# Scores below this are written as 0 and stop being rewritten.
SCORE_EPSILON = 0.05
PREDICTION_HORIZON_DAYS = 90
# The weak prior of the BG/NBD fit is worth this many customers (engine/btyd.py).
BTYD_PRIOR_WEIGHT = 1.0
REASONS_SHOWN = 5
WATERMARK_OVERLAP = timedelta(minutes=15)
STATE_KEY = "drip_marketing.prediction_state.%s"


class DripPrediction(models.AbstractModel):
    _name = "drip.prediction"
    _description = "Drip Marketing Predictions"

    def init(self):
        # The hourly engagement pass looks for facts recorded since its last run: these
        # keep that look proportional to what is new, not to the size of the ledger.
        self.env.cr.execute(
            """
            CREATE INDEX IF NOT EXISTS drip_message_write_date_idx ON drip_message (write_date);
            CREATE INDEX IF NOT EXISTS drip_event_write_date_idx ON drip_event (write_date);
            CREATE INDEX IF NOT EXISTS sale_order_drip_write_date_idx ON sale_order (write_date);
            """
        )

    # ================================================================ plumbing
    @api.model
    def _get_state(self, name):
        raw = self.env["ir.config_parameter"].sudo().get_param(STATE_KEY % name)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    @api.model
    def _set_state(self, name, state):
        self.env["ir.config_parameter"].sudo().set_param(STATE_KEY % name, json.dumps(state))

    @api.model
    def _try_lock(self, name):
        """One refresh of a kind at a time (cron runners, the settings button, tests)."""
        self.env.cr.execute(
            "SELECT pg_try_advisory_xact_lock(hashtext(%s))", [f"drip_marketing.{name}"]
        )
        return self.env.cr.fetchone()[0]

    @api.model
    def _default_company(self):
        """The company of customers that belong to none (shared partners)."""
        return self.env.ref("base.main_company", raise_if_not_found=False) or self.env[
            "res.company"
        ].sudo().search([], limit=1)

    @api.model
    def _companies(self):
        # Every company has its own model and pattern; a database holds a handful.
        return self.env["res.company"].sudo().search([])  # pylint: disable=no-search-all

    @api.model
    def _max_partner_id(self):
        self.env.cr.execute("SELECT COALESCE(max(id), 0) FROM res_partner")
        return self.env.cr.fetchone()[0]

    @api.model
    def _flush_sources(self):
        for model in ("res.partner", "res.company", "sale.order", "drip.message", "drip.event",
                      "drip.scoring.rule", "drip.journey"):
            self.env[model].flush_model()

    @api.model
    def _run_pass(self, step, **kwargs):
        """Run every batch of a refresh now (tests, benchmark, demo data)."""
        for _attempt in range(100000):
            _done, remaining = step(**kwargs)
            kwargs.pop("now", None)
            kwargs.pop("full", None)
            if not remaining:
                return
        raise RuntimeError("refresh did not finish")  # pragma: no cover

    @api.model
    def _trigger_refreshes(self):
        for xmlid in ("ir_cron_refresh_engagement", "ir_cron_refresh_btyd",
                      "ir_cron_refresh_best_time"):
            cron = self.env.ref(f"drip_marketing.{xmlid}", raise_if_not_found=False)
            if cron:
                cron.sudo()._trigger()

    @api.model
    def _partner_range(self, alias, lo, hi):
        """``alias.partner_id`` in [lo, hi): batches are ranges of partner ids."""
        column = SQL.identifier(alias, "partner_id")
        return SQL("%s >= %s AND %s < %s", column, lo, column, hi)

    # ================================================================ engagement
    @api.model
    def _scoring_setup(self):
        """Per company: half-life, points per kind, thresholds to watch; + a fingerprint."""
        companies = self._companies()
        points = self.env["drip.scoring.rule"]._points_by_company(companies)
        journeys = self.env["drip.journey"].sudo().search(
            [("trigger", "=", "score_crossed"), ("state", "=", "running")]
        )
        setup = {}
        for company in companies:
            thresholds = {
                j.trigger_score_threshold for j in journeys
                if j.company_id == company and j.trigger_score_threshold > 0
            }
            if company.drip_handoff_threshold > 0:
                thresholds.add(company.drip_handoff_threshold)
            setup[company.id] = {
                "half_life": company.drip_score_half_life_days,
                "points": points[company.id],
                "thresholds": sorted(thresholds),
                "handoff": company.drip_handoff_threshold,
            }
        fingerprint = json.dumps(
            {cid: [s["half_life"], s["points"]] for cid, s in setup.items()}, sort_keys=True
        )
        return setup, fingerprint

    @api.model
    def _rules_sql(self, setup):
        """The rules as an inline table (company_id, kind, points, half_life)."""
        rows = [
            (cid, kind, float(value), float(s["half_life"]))
            for cid, s in setup.items() for kind, value in s["points"].items()
        ]
        return SQL(
            "SELECT * FROM unnest(%s::int[], %s::varchar[], %s::float8[], %s::float8[]) "
            "AS r(company_id, kind, points, half_life)",
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            [r[3] for r in rows],
        )

    @api.model
    def _facts_sql(self, partner_condition, now):
        """Every scored fact of the partners matching ``partner_condition(alias)``.

        Rows are (partner_id, kind, at, res_model, res_id); facts after ``now`` have not
        happened yet and are left out (engine/scoring.py).
        """
        return SQL(
            """
            SELECT m.partner_id, f.kind, f.at, 'drip.message' AS res_model, m.id AS res_id
              FROM drip_message m
             CROSS JOIN LATERAL (VALUES ('open', m.opened_at), ('click', m.clicked_at),
                                        ('reply', m.replied_at), ('bounce', m.bounced_at),
                                        ('unsubscribe', m.unsubscribed_at)) AS f(kind, at)
             WHERE %(m)s AND f.at IS NOT NULL AND f.at <= %(now)s AND m.is_test IS NOT TRUE
            UNION ALL
            SELECT o.partner_id, 'order', o.date_order, 'sale.order', o.id
              FROM sale_order o
             WHERE %(o)s AND o.state = 'sale' AND o.date_order <= %(now)s
            UNION ALL
            SELECT o.partner_id, 'cart_add', o.drip_cart_activity_at, 'sale.order', o.id
              FROM sale_order o
             WHERE %(o)s AND o.state IN ('draft', 'sent')
               AND o.drip_cart_activity_at <= %(now)s
            UNION ALL
            SELECT e.partner_id,
                   CASE t.code WHEN 'product_viewed' THEN 'product_view' ELSE 'cart_add' END,
                   e.occurred_at, 'drip.event', e.id
              FROM drip_event e
              JOIN drip_event_type t ON t.id = e.event_type_id
             WHERE %(e)s AND t.code IN ('product_viewed', 'cart_updated')
               AND e.name != 'Product Removed' AND e.occurred_at <= %(now)s
            """,
            m=partner_condition("m"), o=partner_condition("o"), e=partner_condition("e"),
            now=now,
        )

    @api.model
    def _valued_facts_sql(self, partner_condition, now, setup, default_company):
        """Facts with their rule's points and decayed value at ``now``."""
        return SQL(
            """
            SELECT f.partner_id, f.kind, f.at, f.res_model, f.res_id, r.points,
                   r.points * power(0.5, extract(epoch FROM (%(now)s - f.at))
                                         / (86400.0 * r.half_life)) AS value
              FROM (%(facts)s) f
              JOIN res_partner p ON p.id = f.partner_id
              JOIN (%(rules)s) r ON r.company_id = COALESCE(p.company_id, %(default)s)
                                AND r.kind = f.kind
            """,
            facts=self._facts_sql(partner_condition, now), rules=self._rules_sql(setup),
            now=now, default=default_company.id,
        )

    @api.model
    def _dirty_partners(self, lo, hi, since, event_from, now):
        """Partners of [lo, hi) with a fact recorded since the last pass."""
        self.env.cr.execute(SQL(
            """
            SELECT m.partner_id FROM drip_message m
             WHERE %(m)s AND m.write_date > %(since)s
            UNION
            SELECT o.partner_id FROM sale_order o
             WHERE %(o)s AND o.write_date > %(since)s
            UNION
            SELECT e.partner_id FROM drip_event e
             WHERE %(e)s AND (e.id > %(event_from)s OR e.write_date > %(since)s
                              OR (e.occurred_at > %(occurred_since)s
                                  AND e.occurred_at <= %(now)s))
            """,
            m=self._partner_range("m", lo, hi), o=self._partner_range("o", lo, hi),
            e=self._partner_range("e", lo, hi),
            # A transaction that began before the last pass and committed after it wrote
            # an older write_date: the overlap catches it; recomputing twice is harmless.
            since=since - WATERMARK_OVERLAP, occurred_since=since, event_from=event_from,
            now=now,
        ))
        return [row[0] for row in self.env.cr.fetchall() if row[0] is not None]

    @api.model
    def _cron_refresh_engagement(self, batch_size=BATCH_SIZE):
        done, remaining = self._refresh_engagement_step(batch_size=batch_size)
        self.env["ir.cron"]._notify_progress(done=done, remaining=remaining)

    @api.model
    def _refresh_engagement(self, now=None, full=False, batch_size=BATCH_SIZE):
        self._run_pass(self._refresh_engagement_step, now=now, full=full, batch_size=batch_size)

    @api.model
    def _refresh_engagement_step(self, now=None, full=False, batch_size=BATCH_SIZE):
        """One batch of the engagement refresh; returns (partners covered, remaining)."""
        if not self._try_lock("engagement"):
            return 0, 0
        self._flush_sources()
        state = self._get_state("engagement")
        run = state.get("pass")
        setup, fingerprint = self._scoring_setup()
        if not run:
            now = now or fields.Datetime.now()
            full_at = state.get("full_at")
            full = bool(
                full or not state.get("since") or state.get("fingerprint") != fingerprint
                or not full_at
                or fields.Datetime.from_string(full_at)
                < now - timedelta(days=FULL_ENGAGEMENT_EVERY_DAYS)
            )
            self.env.cr.execute("SELECT COALESCE(max(id), 0) FROM drip_event")
            run = {
                "now": fields.Datetime.to_string(now), "since": state.get("since"),
                "event_from": state.get("event_id", 0), "event_to": self.env.cr.fetchone()[0],
                "full": full, "next_id": 0, "fingerprint": fingerprint,
            }
        elif fingerprint != run.get("fingerprint"):
            # Rules or half-lives changed in the middle of a pass: start over, in full.
            run.update(full=True, next_id=0, fingerprint=fingerprint)
        lo = run["next_id"]
        hi = lo + batch_size
        written = self._refresh_engagement_range(lo, hi, run, setup)
        top = self._max_partner_id()
        # Progress counts the partners covered, not rows written: a batch that changes
        # nothing still moves the pass on (ir.cron reads done == 0 as "nothing to do").
        done = max(min(hi, top + 1) - lo, 1)
        _logger.debug("%s: partners [%s, %s) covered, %s rows written", self._name, lo, hi,
                      written)
        if hi > top:
            state = {
                "since": run["now"], "event_id": run["event_to"],
                "fingerprint": run["fingerprint"],
                "full_at": run["now"] if run["full"] else state.get("full_at"), "pass": None,
            }
            remaining = 0
        else:
            run["next_id"] = hi
            state["pass"] = run
            remaining = top - hi + 1
        self._set_state("engagement", state)
        return done, remaining

    @api.model
    def _refresh_engagement_range(self, lo, hi, run, setup):
        """Recompute the partners of [lo, hi) with new facts, decay the others."""
        now = fields.Datetime.from_string(run["now"])
        default = self._default_company()
        cr = self.env.cr
        if run["full"]:
            def condition(alias):
                return self._partner_range(alias, lo, hi)
            dirty = None
        else:
            since = fields.Datetime.from_string(run["since"])
            dirty = self._dirty_partners(lo, hi, since, run["event_from"], now)

            def condition(alias):
                return SQL("%s = ANY(%s)", SQL.identifier(alias, "partner_id"), dirty)
        recomputed = 0
        if dirty is None or dirty:
            cr.execute(SQL(
                "SELECT v.partner_id, sum(v.value) FROM (%s) v GROUP BY v.partner_id",
                self._valued_facts_sql(condition, now, setup, default),
            ))
            fresh = dict(cr.fetchall())
            if dirty is None:
                # Full pass: also every scored partner of the range without facts (left).
                cr.execute(
                    "SELECT id FROM res_partner WHERE id >= %s AND id < %s "
                    "AND drip_engagement_score > 0", [lo, hi],
                )
                candidates = set(fresh) | {row[0] for row in cr.fetchall()}
            else:
                candidates = set(dirty)
            recomputed = self._write_scores(candidates, fresh, now, setup, default)
        decayed = 0
        if dirty is not None:
            # Everybody else only decays: exact from their anchor (score, time), written
            # when the shown value (one decimal) changes.
            cr.execute(SQL(
                """
                UPDATE res_partner p
                   SET drip_engagement_score = d.score, drip_engagement_at = %(now)s
                  FROM (SELECT p2.id,
                               CASE WHEN v.decayed < %(eps)s THEN 0 ELSE v.decayed END AS score
                          FROM res_partner p2
                          JOIN res_company c ON c.id = COALESCE(p2.company_id, %(default)s)
                         CROSS JOIN LATERAL (
                               SELECT p2.drip_engagement_score::float8
                                      * power(0.5, GREATEST(extract(epoch FROM
                                          (%(now)s - p2.drip_engagement_at)), 0)
                                          / (86400.0 * c.drip_score_half_life_days)) AS decayed
                         ) v
                         WHERE p2.id >= %(lo)s AND p2.id < %(hi)s
                           AND p2.drip_engagement_score > 0
                           AND p2.drip_engagement_at IS NOT NULL
                           AND NOT (p2.id = ANY(%(skip)s))
                       ) d
                 WHERE p.id = d.id
                   AND round(d.score::numeric, 1) != round(p.drip_engagement_score, 1)
                """,
                now=now, eps=SCORE_EPSILON, default=default.id, lo=lo, hi=hi, skip=dirty,
            ))
            decayed = cr.rowcount
        self.env["res.partner"].invalidate_model(["drip_engagement_score", "drip_engagement_at"])
        return recomputed + decayed

    @api.model
    def _write_scores(self, candidates, fresh, now, setup, default):
        """Write recomputed scores, emit crossings, hand off; returns rows written."""
        if not candidates:
            return 0
        cr = self.env.cr
        cr.execute(
            """
            SELECT id, COALESCE(company_id, %s), COALESCE(drip_engagement_score, 0)::float8,
                   drip_engagement_at
              FROM res_partner WHERE id = ANY(%s)
            """,
            [default.id, list(candidates)],
        )
        ids, scores, crossings = [], [], []
        for pid, company_id, old, old_at in cr.fetchall():
            company_setup = setup.get(company_id) or setup[default.id]
            half_life = company_setup["half_life"]
            previous = (
                scoring.decay(old, (now - old_at).total_seconds() / 86400.0, half_life)
                if old_at and old > 0 else 0.0
            )
            new = max(0.0, fresh.get(pid, 0.0))
            if new < SCORE_EPSILON:
                new = 0.0
            if (old_at is not None and abs(new - previous) <= 1e-6 * max(1.0, new)
                    and round(new, 1) == round(old, 1)):
                continue  # same trajectory, same shown value: the stored anchor holds
            ids.append(pid)
            scores.append(new)
            for threshold in scoring.crossings(previous, new, company_setup["thresholds"]):
                crossings.append((pid, company_id, threshold, new))
        if ids:
            cr.execute(
                """
                UPDATE res_partner p SET drip_engagement_score = v.score,
                                         drip_engagement_at = %s
                  FROM unnest(%s::int[], %s::float8[]) AS v(id, score)
                 WHERE p.id = v.id
                """,
                [now, ids, scores],
            )
        if crossings:
            self._emit_crossings(crossings, now)
            handoffs = [
                c for c in crossings
                if c[2] == (setup.get(c[1]) or setup[default.id])["handoff"]
            ]
            if handoffs:
                self._prepare_handoffs(handoffs, now, setup, default)
        return len(ids)

    @api.model
    def _emit_crossings(self, crossings, now):
        """``score_crossed`` events, one INSERT: journeys trigger on them."""
        event_type = self.env.ref("drip_marketing.event_type_score_crossed")
        self.env.cr.execute(
            """
            INSERT INTO drip_event (name, event_type_id, partner_id, company_id, call_type,
                                    occurred_at, received_at, payload, processed,
                                    create_uid, create_date, write_uid, write_date)
            SELECT 'score_crossed', %(type)s, c.partner_id, c.company_id, 'internal',
                   %(now)s, %(now)s,
                   jsonb_build_object('threshold', c.threshold::jsonb,
                                      'score', round(c.score::numeric, 1)),
                   TRUE, %(uid)s, %(now)s, %(uid)s, %(now)s
              FROM unnest(%(partners)s::int[], %(companies)s::int[], %(thresholds)s::text[],
                          %(scores)s::float8[]) AS c(partner_id, company_id, threshold, score)
            """,
            {
                "type": event_type.id, "now": now, "uid": self.env.uid,
                "partners": [c[0] for c in crossings], "companies": [c[1] for c in crossings],
                # As JSON text: 50.0 stays 50.0, so ``payload ->> 'threshold'`` reads the
                # same as Python's str() of the journey's float threshold.
                "thresholds": [json.dumps(float(c[2])) for c in crossings],
                "scores": [c[3] for c in crossings],
            },
        )
        self.env["drip.event"].invalidate_model()

    @api.model
    def _prepare_handoffs(self, handoffs, now, setup, default):
        """Explain each hand-off with the facts that weigh most in the score now."""
        partner_ids = [h[0] for h in handoffs]
        self.env.cr.execute(SQL(
            """
            SELECT partner_id, kind, at, res_model, res_id, points, value
              FROM (SELECT v.*, row_number() OVER (
                               PARTITION BY v.partner_id ORDER BY v.value DESC, v.at DESC) AS rank
                      FROM (%(valued)s) v WHERE v.points > 0) ranked
             WHERE rank <= %(shown)s
             ORDER BY partner_id, rank
            """,
            valued=self._valued_facts_sql(
                lambda alias: SQL("%s = ANY(%s)", SQL.identifier(alias, "partner_id"),
                                  partner_ids),
                now, setup, default,
            ),
            shown=REASONS_SHOWN,
        ))
        rows = self.env.cr.fetchall()
        labels = self._fact_labels(rows)
        reasons = defaultdict(list)
        for pid, kind, at, res_model, res_id, _points, value in rows:
            reasons[pid].append({
                "kind": kind, "at": at, "value": value,
                "label": labels.get((res_model, res_id, kind), ""),
            })
        partners = self.env["res.partner"].browse(partner_ids)
        self._handoff([
            {
                "partner": partners.browse(pid),
                "score": score,
                "threshold": threshold,
                "reasons": reasons.get(pid, []),
            }
            for pid, _company_id, threshold, score in handoffs
        ])

    @api.model
    def _fact_labels(self, rows):
        """Readable labels of the facts behind a score: what was opened, ordered, viewed."""
        kinds = dict(self.env["drip.scoring.rule"]._fields["kind"]._description_selection(
            self.env))
        by_model = defaultdict(set)
        for _pid, _kind, _at, res_model, res_id, _points, _value in rows:
            by_model[res_model].add(res_id)
        names = {}
        messages = self.env["drip.message"].sudo().browse(by_model["drip.message"]).exists()
        for message in messages:
            names[("drip.message", message.id)] = (
                message.subject or message.template_id.display_name or message.step_id.name
                or ""
            )
        for order in self.env["sale.order"].sudo().browse(by_model["sale.order"]).exists():
            names[("sale.order", order.id)] = order.name
        for event in self.env["drip.event"].sudo().browse(by_model["drip.event"]).exists():
            names[("drip.event", event.id)] = event.product_id.display_name or event.name
        result = {}
        for _pid, kind, _at, res_model, res_id, _points, _value in rows:
            name = names.get((res_model, res_id))
            result[(res_model, res_id, kind)] = (
                f"{kinds.get(kind, kind)}: {name}" if name else kinds.get(kind, kind)
            )
        return result

    @api.model
    def _handoff_note(self, item):
        lines = Markup("").join(
            Markup("<li>%s — %s (%s)</li>") % (
                reason["label"],
                fields.Date.to_string(reason["at"].date()),
                f"{reason['value']:+.1f}",
            )
            for reason in item["reasons"]
        )
        return Markup("<p>%s</p><ul>%s</ul>") % (
            _("Engagement score %(score).1f reached the hand-off threshold %(threshold)g. "
              "What weighs most:", score=item["score"], threshold=item["threshold"]),
            lines,
        )

    @api.model
    def _handoff(self, items):
        """Tell each customer's salesperson: an activity on the customer (overridden by
        ``drip_marketing_crm`` to open an opportunity instead).

        Customers without a salesperson (on themselves or their company) are left to the
        ``score_crossed`` journeys; a customer who still has an open hand-off activity
        does not get a second one.
        """
        activity_type = self.env.ref("drip_marketing.mail_activity_type_drip_handoff")
        partners = self.env["res.partner"].browse([item["partner"].id for item in items])
        open_ids = set(self.env["mail.activity"].sudo().search([
            ("res_model", "=", "res.partner"), ("res_id", "in", partners.ids),
            ("activity_type_id", "=", activity_type.id),
        ]).mapped("res_id"))
        model_id = self.env["ir.model"]._get_id("res.partner")
        vals_list = []
        for item in items:
            partner = item["partner"]
            user = partner.user_id or partner.commercial_partner_id.user_id
            if not user or partner.id in open_ids:
                continue
            open_ids.add(partner.id)
            vals_list.append({
                "res_model_id": model_id,
                "res_id": partner.id,
                "activity_type_id": activity_type.id,
                "summary": _("Engaged customer: score %.0f", item["score"]),
                "note": self._handoff_note(item),
                "user_id": user.id,
                "date_deadline": fields.Date.context_today(self),
            })
        return self.env["mail.activity"].sudo().with_context(
            mail_activity_quick_update=True).create(vals_list)

    # ================================================================ buy till you die
    @api.model
    def _cron_refresh_btyd(self, batch_size=BATCH_SIZE):
        done, remaining = self._refresh_btyd_step(batch_size=batch_size)
        self.env["ir.cron"]._notify_progress(done=done, remaining=remaining)

    @api.model
    def _refresh_btyd(self, now=None, batch_size=BATCH_SIZE):
        self._run_pass(self._refresh_btyd_step, now=now, batch_size=batch_size)

    @api.model
    def _refresh_btyd_step(self, now=None, batch_size=BATCH_SIZE):
        """Fit per company at the start of a pass, then predict one range of partners."""
        if not self._try_lock("btyd"):
            return 0, 0
        self._flush_sources()
        state = self._get_state("btyd")
        run = state.get("pass")
        if not run:
            now = now or fields.Datetime.now()
            self._fit_btyd(now)
            run = {"now": fields.Datetime.to_string(now), "next_id": 0}
        lo = run["next_id"]
        hi = lo + batch_size
        written = self._predict_btyd_range(lo, hi, fields.Datetime.from_string(run["now"]))
        top = self._max_partner_id()
        # Progress counts the partners covered, not rows written: a batch that changes
        # nothing still moves the pass on (ir.cron reads done == 0 as "nothing to do").
        done = max(min(hi, top + 1) - lo, 1)
        _logger.debug("%s: partners [%s, %s) covered, %s rows written", self._name, lo, hi,
                      written)
        if hi > top:
            state, remaining = {"pass": None, "done_at": run["now"]}, 0
        else:
            run["next_id"] = hi
            state, remaining = {"pass": run}, top - hi + 1
        self._set_state("btyd", state)
        return done, remaining

    @api.model
    def _triples_sql(self, now, partner_condition=None):
        """Per customer and company: (x, t_x, T) in days from confirmed orders by ``now``.

        Orders of the same (UTC) day count once, as the model wants distinct purchase
        occasions.
        """
        return SQL(
            """
            SELECT o.partner_id, o.company_id,
                   count(DISTINCT o.date_order::date) - 1 AS x,
                   max(o.date_order::date) - min(o.date_order::date) AS t_x,
                   %(today)s::date - min(o.date_order::date) AS age,
                   max(o.date_order) AS last_order
              FROM sale_order o
             WHERE o.state = 'sale' AND o.date_order <= %(now)s AND o.partner_id IS NOT NULL
               AND %(condition)s
             GROUP BY o.partner_id, o.company_id
            """,
            today=now.date(), now=now, condition=partner_condition or SQL("TRUE"),
        )

    @api.model
    def _fit_btyd(self, now):
        """Fit BG/NBD per company on grouped triples; store the parameters."""
        self.env.cr.execute(SQL(
            "SELECT company_id, x, t_x, age, count(*) FROM (%s) t GROUP BY 1, 2, 3, 4",
            self._triples_sql(now),
        ))
        grouped = defaultdict(list)
        for company_id, x, t_x, age, count in self.env.cr.fetchall():
            grouped[company_id].append((x, t_x, age, count))
        for company in self._companies():
            rows = grouped.get(company.id)
            if not rows:
                company.drip_btyd_params = False
                continue
            data = np.array(rows, dtype=float)
            params = btyd.fit(
                data[:, 0], data[:, 1], data[:, 2], data[:, 3],
                prior=btyd.TYPICAL, prior_weight=BTYD_PRIOR_WEIGHT,
            )
            values = params.as_dict()
            values.update(fitted_at=fields.Datetime.to_string(now), triples=len(rows))
            company.drip_btyd_params = values
            _logger.info("BG/NBD for %s on %d customers: %s", company.name, params.n, params)

    @api.model
    def _predict_btyd_range(self, lo, hi, now):
        """P(alive), expected orders, next order and churn risk for [lo, hi)."""
        cr = self.env.cr
        cr.execute(SQL(
            """
            SELECT DISTINCT ON (t.partner_id) t.partner_id, t.company_id, t.x, t.t_x, t.age
              FROM (%s) t ORDER BY t.partner_id, t.last_order DESC
            """,
            self._triples_sql(now, self._partner_range("o", lo, hi)),
        ))
        rows = cr.fetchall()
        columns = {name: [] for name in ("id", "p_alive", "expected", "next_date", "risk")}
        companies = self.env["res.company"].sudo().browse({row[1] for row in rows})
        by_company = defaultdict(list)
        for row in rows:
            by_company[row[1]].append(row)
        for company in companies:
            if not company.drip_btyd_params:
                continue
            params = btyd.BGNBDParams.from_dict(company.drip_btyd_params)
            data = np.array([row[2:] for row in by_company[company.id]], dtype=float)
            x, t_x, age = data[:, 0], data[:, 1], data[:, 2]
            p_alive = btyd.p_alive(params, x, t_x, age)
            expected = btyd.expected_purchases(params, PREDICTION_HORIZON_DAYS, x, t_x, age)
            p_order = btyd.p_purchase_within(
                params, company.drip_churn_horizon_days, x, t_x, age
            )
            median = btyd.median_days_to_next(params, x, age)
            risk = np.where(
                p_order < company.drip_churn_lapsed_below, "lapsed",
                np.where(p_order < company.drip_churn_at_risk_below, "at_risk", "low"),
            )
            today = now.date()
            for index, row in enumerate(by_company[company.id]):
                columns["id"].append(row[0])
                columns["p_alive"].append(round(float(p_alive[index]), 3))
                columns["expected"].append(round(float(expected[index]), 2))
                columns["risk"].append(str(risk[index]))
                # Conditional on being active: a lapsed customer gets no predicted date.
                days = float(median[index])
                columns["next_date"].append(
                    None if risk[index] == "lapsed" or not math.isfinite(days) or days > 36500
                    else today + timedelta(days=math.ceil(days))
                )
        cr.execute(
            """
            UPDATE res_partner p
               SET drip_p_alive = v.p_alive, drip_expected_orders_90d = v.expected,
                   drip_next_order_date = v.next_date, drip_churn_risk = v.risk
              FROM unnest(%s::int[], %s::numeric[], %s::numeric[], %s::date[], %s::varchar[])
                   AS v(id, p_alive, expected, next_date, risk)
             WHERE p.id = v.id
               AND (p.drip_p_alive IS DISTINCT FROM v.p_alive
                    OR p.drip_expected_orders_90d IS DISTINCT FROM v.expected
                    OR p.drip_next_order_date IS DISTINCT FROM v.next_date
                    OR p.drip_churn_risk IS DISTINCT FROM v.risk)
            """,
            [columns["id"], columns["p_alive"], columns["expected"], columns["next_date"],
             columns["risk"]],
        )
        written = cr.rowcount
        # Customers of the range whose orders are all gone (cancelled) lose their predictions.
        cr.execute(
            """
            UPDATE res_partner
               SET drip_p_alive = NULL, drip_expected_orders_90d = NULL,
                   drip_next_order_date = NULL, drip_churn_risk = NULL
             WHERE id >= %s AND id < %s AND drip_churn_risk IS NOT NULL
               AND NOT (id = ANY(%s))
            """,
            [lo, hi, columns["id"]],
        )
        written += cr.rowcount
        self.env["res.partner"].invalidate_model([
            "drip_p_alive", "drip_expected_orders_90d", "drip_next_order_date",
            "drip_churn_risk",
        ])
        return written

    @api.model
    def _btyd_summary(self, company):
        params = company.drip_btyd_params
        if not params:
            return _("Not fitted yet: it needs confirmed orders and runs nightly.")
        return _(
            "Fitted on %(n)s customers on %(date)s: an active customer orders every "
            "%(gap).0f days on average; %(dropout).0f%% drop out after an order.",
            n=params.get("n"), date=(params.get("fitted_at") or "")[:10],
            gap=params["alpha"] / params["r"] if params["r"] else 0,
            dropout=100 * params["a"] / (params["a"] + params["b"]),
        )

    # ================================================================ best time
    @api.model
    def _cron_refresh_best_time(self, batch_size=BATCH_SIZE):
        done, remaining = self._refresh_best_time_step(batch_size=batch_size)
        self.env["ir.cron"]._notify_progress(done=done, remaining=remaining)

    @api.model
    def _refresh_best_time(self, now=None, batch_size=BATCH_SIZE):
        self._run_pass(self._refresh_best_time_step, now=now, batch_size=batch_size)

    @api.model
    def _refresh_best_time_step(self, now=None, batch_size=BATCH_SIZE):
        if not self._try_lock("best_time"):
            return 0, 0
        self._flush_sources()
        state = self._get_state("best_time")
        run = state.get("pass")
        if not run:
            now = now or fields.Datetime.now()
            self._refresh_store_patterns(now)
            run = {"now": fields.Datetime.to_string(now), "next_id": 0}
        lo = run["next_id"]
        hi = lo + batch_size
        written = self._best_time_range(lo, hi, fields.Datetime.from_string(run["now"]))
        top = self._max_partner_id()
        # Progress counts the partners covered, not rows written: a batch that changes
        # nothing still moves the pass on (ir.cron reads done == 0 as "nothing to do").
        done = max(min(hi, top + 1) - lo, 1)
        _logger.debug("%s: partners [%s, %s) covered, %s rows written", self._name, lo, hi,
                      written)
        if hi > top:
            state, remaining = {"pass": None, "done_at": run["now"]}, 0
        else:
            run["next_id"] = hi
            state, remaining = {"pass": run}, top - hi + 1
        self._set_state("best_time", state)
        return done, remaining

    @api.model
    def _local_hours_sql(self, now, partner_condition=None):
        """(partner_id, company_id, local hour of the week, weight) of engagement facts.

        Local to the customer's time zone, else the company's default one; names that
        PostgreSQL does not know fall back rather than fail the refresh.
        """
        default = self._default_company()
        since = now - timedelta(days=besttime.HISTORY_DAYS)
        weights = besttime.KIND_WEIGHTS
        condition = partner_condition or (lambda alias: SQL("TRUE"))
        return SQL(
            """
            WITH zones AS MATERIALIZED (SELECT name FROM pg_timezone_names),
            facts AS (
                SELECT m.partner_id, m.opened_at AS at, %(w_open)s::float8 AS weight
                  FROM drip_message m
                 WHERE %(m)s AND m.opened_at > %(since)s AND m.opened_at <= %(now)s
                   AND m.is_test IS NOT TRUE
                UNION ALL
                SELECT m.partner_id, m.clicked_at, %(w_click)s
                  FROM drip_message m
                 WHERE %(m)s AND m.clicked_at > %(since)s AND m.clicked_at <= %(now)s
                   AND m.is_test IS NOT TRUE
                UNION ALL
                SELECT o.partner_id, o.date_order, %(w_order)s
                  FROM sale_order o
                 WHERE %(o)s AND o.state = 'sale' AND o.date_order > %(since)s
                   AND o.date_order <= %(now)s
            )
            SELECT f.partner_id, c.id AS company_id,
                   ((extract(isodow FROM l.local) - 1) * 24 + extract(hour FROM l.local))::int
                       AS hour,
                   f.weight
              FROM facts f
              JOIN res_partner p ON p.id = f.partner_id
              JOIN res_company c ON c.id = COALESCE(p.company_id, %(default)s)
              LEFT JOIN zones zp ON zp.name = p.tz
              LEFT JOIN zones zc ON zc.name = c.drip_default_tz
             CROSS JOIN LATERAL (
                   SELECT (f.at AT TIME ZONE 'UTC') AT TIME ZONE COALESCE(zp.name, zc.name, 'UTC')
                          AS local) l
            """,
            w_open=weights["open"], w_click=weights["click"], w_order=weights["order"],
            m=condition("m"), o=condition("o"), since=since, now=now, default=default.id,
        )

    @api.model
    def _refresh_store_patterns(self, now):
        self.env.cr.execute(SQL(
            "SELECT company_id, hour, sum(weight) FROM (%s) h GROUP BY 1, 2",
            self._local_hours_sql(now),
        ))
        totals = defaultdict(lambda: np.zeros(besttime.HOURS))
        for company_id, hour, weight in self.env.cr.fetchall():
            totals[company_id][hour] += weight
        for company in self._companies():
            counts = totals.get(company.id)
            company.drip_best_time_pattern = (
                [round(float(v), 6) for v in besttime.store_pattern(counts)]
                if counts is not None and counts.sum() > 0 else False
            )

    @api.model
    def _best_time_range(self, lo, hi, now):
        cr = self.env.cr
        cr.execute(SQL(
            "SELECT partner_id, company_id, hour, sum(weight) FROM (%s) h GROUP BY 1, 2, 3",
            self._local_hours_sql(now, lambda alias: self._partner_range(alias, lo, hi)),
        ))
        rows = cr.fetchall()
        index = {}
        companies = {}
        for pid, company_id, _hour, _weight in rows:
            if pid not in index:
                index[pid] = len(index)
                companies[pid] = company_id
        counts = np.zeros((len(index), besttime.HOURS))
        for pid, _company_id, hour, weight in rows:
            counts[index[pid], hour] += weight
        ids, hours, histograms = [], [], []
        patterns = {}
        for company in self.env["res.company"].sudo().browse(set(companies.values())):
            pattern = company.drip_best_time_pattern
            patterns[company.id] = (
                np.asarray(pattern, dtype=float) if pattern else np.full(besttime.HOURS, 1 / 168)
            )
        for company_id in set(companies.values()):
            members = [pid for pid in index if companies[pid] == company_id]
            stack = counts[[index[pid] for pid in members]]
            best = besttime.best_hour(stack, patterns[company_id])
            for pid, hour, row in zip(members, best, stack):
                ids.append(pid)
                hours.append(int(hour))
                histograms.append(json.dumps(besttime.sparse(row), sort_keys=True))
        cr.execute(
            """
            UPDATE res_partner p
               SET drip_best_hour_of_week = v.hour, drip_best_time_histogram = v.histogram
              FROM unnest(%s::int[], %s::int[], %s::jsonb[]) AS v(id, hour, histogram)
             WHERE p.id = v.id
               AND (p.drip_best_hour_of_week IS DISTINCT FROM v.hour
                    OR p.drip_best_time_histogram IS DISTINCT FROM v.histogram)
            """,
            [ids, hours, histograms],
        )
        written = cr.rowcount
        cr.execute(
            """
            UPDATE res_partner
               SET drip_best_hour_of_week = -1, drip_best_time_histogram = NULL
             WHERE id >= %s AND id < %s AND NOT (id = ANY(%s))
               AND (drip_best_hour_of_week != -1 OR drip_best_time_histogram IS NOT NULL)
            """,
            [lo, hi, ids],
        )
        written += cr.rowcount
        self.env["res.partner"].invalidate_model(
            ["drip_best_hour_of_week", "drip_best_time_histogram"]
        )
        return written

    @api.model
    def _best_time_weights(self, partners):
        """``{partner_id: (tz, weights)}`` for scheduling at the best time.

        ``weights`` (168 floats, a tuple so identical customers share a cached schedule)
        are the customer's histogram shrunk toward their store's pattern; ``None`` when
        neither has any history.
        """
        if not partners:
            return {}
        partners.flush_recordset(["tz", "company_id", "drip_best_time_histogram"])
        default = self._default_company()
        self.env.cr.execute(
            """
            SELECT id, tz, COALESCE(company_id, %s), drip_best_time_histogram
              FROM res_partner WHERE id = ANY(%s)
            """,
            [default.id, partners.ids],
        )
        rows = self.env.cr.fetchall()
        patterns = {
            company.id: company.drip_best_time_pattern
            for company in self.env["res.company"].sudo().browse({row[2] for row in rows})
        }
        cache = {}
        result = {}
        for pid, tz, company_id, histogram in rows:
            key = (company_id, json.dumps(histogram, sort_keys=True) if histogram else None)
            if key not in cache:
                cache[key] = besttime.weights_for(histogram, patterns.get(company_id))
            result[pid] = (tz, cache[key])
        return result

    @api.model
    def _compute_best_time_labels(self, partners):
        days = [_("Monday"), _("Tuesday"), _("Wednesday"), _("Thursday"), _("Friday"),
                _("Saturday"), _("Sunday")]
        for partner in partners:
            hour = partner.drip_best_hour_of_week
            partner.drip_best_time_label = (
                f"{days[hour // 24]} {hour % 24:02d}:00" if 0 <= hour < 168
                else _("Store's usual time")
            )

