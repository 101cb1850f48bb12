"""Product recommendations: "bought together", completed by category best sellers.

The recommendation store is three tables that one scheduled action keeps together, all
written set-based in SQL (they are technical models: no ORM writes, ``_log_access`` off):

* ``drip.product.affinity.order`` — the ledger of confirmed orders already counted, so an
  order is counted exactly once whatever the cron's overlap or retries;
* ``drip.product.stat`` — per company and product: orders containing it, distinct
  customers, customers who bought it in at least two orders (its *repeat rate*), its
  category (best sellers per category read it through an index);
* ``drip.product.affinity`` — per company and ordered pair (a, b), a ≠ b, both directions
  stored so "neighbours of a" is one index range: ``support`` = orders containing both,
  ``lift`` = support · N / (orders(a) · orders(b)), N = the company's counted orders.

**Incremental.** ``_cron_update`` counts the orders confirmed since a watermark (Odoo sets
``date_order`` to the confirmation time) that are not in the ledger yet, in bounded batches:
pair counts and per-product counts are *added* (``INSERT … ON CONFLICT DO UPDATE``), the
customer and repeat counts are derived from the counted history of the batch's customers
only, and the lift of every pair with a product of the batch is recomputed from the stored
counts — never a rescan of all orders. ``_rebuild`` clears and recounts everything
through the same code path; a weekly cron does the same in bounded batches, to forget
cancelled orders and backdated imports (the incremental pass only adds) and to make every
lift exact.

**Reading** (``_recommend``): ONE SQL statement for a whole batch of customers, over
indexes only (orders by customer, the pair table by (company, product a, lift), the
statistics by (company, category, orders)): bought together with the products the message
is about (the viewed product, the cart), then with the customer's recent purchases, ranked
by lift among pairs with at least the minimum support; then the best sellers of the
customer's favourite categories; then the store's best sellers (a customer without
history). Never an archived or unsellable product, nor an unpublished one (when
``website_sale`` is installed), nor one out of stock when its stock is tracked (``stock``
installed and ``is_storable``: free quantity in the company's internal locations ≤ 0),
nor one the customer already bought unless it is a repeat-purchase product, nor another
variant of a product the message is already about. Prices are then computed in the
customer's pricelist and currency, per pricelist for the whole batch.

**Repeat-purchase product**: ``product.template.drip_repeat_purchase`` = *yes*, or *auto*
(the default) when at least ``reco_repeat_min_customers`` customers bought it and at least
``reco_repeat_rate`` of them (default 25 %) bought it in two or more orders (coffee, not a
sofa); *no* never recommends it again to a buyer.

Settings (``ir.config_parameter``): ``drip_marketing.reco_min_support`` (default 3 orders),
``drip_marketing.reco_repeat_rate`` (0.25), ``drip_marketing.reco_repeat_min_customers``
(4).
"""

import logging
from datetime import timedelta

from odoo import _, api, fields, models
from odoo.exceptions import AccessError
from odoo.tools import SQL

_logger = logging.getLogger(__name__)

DEFAULT_MIN_SUPPORT = 3
DEFAULT_REPEAT_RATE = 0.25
DEFAULT_REPEAT_MIN_CUSTOMERS = 4
# Orders with more distinct products than this (wholesale, B2B) add no pairs: they would
# add a quadratic number of weak pairs; they still count in the product statistics.
MAX_BASKET = 40
# Orders counted per cron call; the cron re-runs at once while work remains.
BATCH_ORDERS = 20000
# Orders confirmed in a transaction still open when the cron ran get this much slack.
WATERMARK_OVERLAP = timedelta(hours=1)
WATERMARK_KEY = "drip_marketing.affinity_watermark"
LIFT_TOTAL_KEY = "drip_marketing.affinity_lift_total.%s"
REBUILD_KEY = "drip_marketing.affinity_rebuild_started"
# Lifts of the pairs a batch did not touch are rewritten only when they moved by more
# than this (relative): the order total grows a little with every batch.
LIFT_TOLERANCE = 0.01
# Counting at least this many orders refreshes the planner statistics of the tables.
ANALYZE_AFTER = 1000
# Read side: purchases used as seeds, candidates per seed / category, categories used.
HISTORY_SEEDS = 10
CANDIDATES_PER_SOURCE = 10
FAVOURITE_CATEGORIES = 3
# Serialises the writers (incremental cron, rebuild): an order must not count twice.
LOCK_KEY = 7460192347
SOURCES = {1: "bought_together", 2: "bought_together", 3: "category_best_seller",
           4: "best_seller"}


class DripProductAffinity(models.Model):
    """Products bought together: one row per company and ordered product pair."""

    _name = "drip.product.affinity"
    _description = "Drip Marketing Products Bought Together"
    _order = "company_id, product_a_id, lift desc"
    _rec_name = "product_b_id"
    _log_access = False

    company_id = fields.Many2one("res.company", required=True, ondelete="cascade",
                                 readonly=True)
    product_a_id = fields.Many2one("product.product", string="Product", required=True,
                                   ondelete="cascade", readonly=True)
    product_b_id = fields.Many2one("product.product", string="Bought with", required=True,
                                   ondelete="cascade", readonly=True)
    support = fields.Integer(readonly=True, help="Confirmed orders containing both products.")
    lift = fields.Float(
        readonly=True,
        help="How much more often the two are bought together than by chance: support × "
        "orders / (orders with the product × orders with the other one). Above 1: "
        "complementary products.",
    )
    updated_at = fields.Datetime(readonly=True)

    _sql_constraints = [
        ("pair_unique", "UNIQUE(company_id, product_a_id, product_b_id)",
         "A product pair is counted once per company."),
        ("pair_distinct", "CHECK(product_a_id <> product_b_id)",
         "A product is not bought together with itself."),
        ("support_positive", "CHECK(support >= 0)", "Support cannot be negative."),
    ]

    def init(self):
        # The read: the neighbours of a product, best lift first, in one index range.
        self.env.cr.execute(
            """
            DROP INDEX IF EXISTS drip_product_affinity_lookup_idx;  -- earlier name
            CREATE INDEX IF NOT EXISTS drip_product_affinity_neighbours_idx
                ON drip_product_affinity (company_id, product_a_id, lift DESC, product_b_id)
                INCLUDE (support);
            CREATE INDEX IF NOT EXISTS drip_product_affinity_product_b_idx
                ON drip_product_affinity (company_id, product_b_id);
            """
        )

    # ------------------------------------------------------------------- settings
    @api.model
    def _settings(self):
        get = self.env["ir.config_parameter"].sudo().get_param

        def number(key, default, kind):
            try:
                value = kind(get(f"drip_marketing.{key}", default))
            except (TypeError, ValueError):
                _logger.warning("drip: ignoring invalid drip_marketing.%s", key)
                return default
            return value if value >= 0 else default

        return {
            "min_support": max(1, number("reco_min_support", DEFAULT_MIN_SUPPORT, int)),
            "repeat_rate": number("reco_repeat_rate", DEFAULT_REPEAT_RATE, float),
            "repeat_min_customers": number(
                "reco_repeat_min_customers", DEFAULT_REPEAT_MIN_CUSTOMERS, int),
        }

    @api.model
    def _line_filter(self, alias="l"):
        """Order lines that are products a customer chose: no sections, notes, down
        payments, loyalty rewards or delivery charges (when those apps are installed)."""
        line_fields = self.env["sale.order.line"]._fields
        conditions = [
            SQL("%s IS NOT NULL", SQL.identifier(alias, "product_id")),
            SQL("%s IS NULL", SQL.identifier(alias, "display_type")),
            SQL("%s IS NOT TRUE", SQL.identifier(alias, "is_downpayment")),
        ]
        if "reward_id" in line_fields:
            conditions.append(SQL("%s IS NULL", SQL.identifier(alias, "reward_id")))
        if "is_delivery" in line_fields:
            conditions.append(SQL("%s IS NOT TRUE", SQL.identifier(alias, "is_delivery")))
        return SQL(" AND ").join(conditions)

    # ------------------------------------------------------------------- actions
    def action_rebuild(self):
        if not self.env.user.has_group("drip_marketing.drip_marketing_group_manager"):
            raise AccessError(_("Only Drip Marketing managers can recount the statistics."))
        self.sudo()._rebuild()
        return {"type": "ir.actions.client", "tag": "reload"}

    # ------------------------------------------------------------------ counting
    @api.model
    def _lock(self):
        self.env.cr.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
        return self.env.cr.fetchone()[0]

    @api.model
    def _flush_sources(self):
        self.env["sale.order"].flush_model(["state", "date_order", "partner_id", "company_id"])
        self.env["sale.order.line"].flush_model()
        self.env["product.product"].flush_model(["product_tmpl_id"])
        self.env["product.template"].flush_model(["categ_id"])

    @api.model
    def _count_orders(self, orders_sql):
        """Add the orders selected by ``orders_sql`` (columns ``order_id, company_id,
        partner_id, date_order``; none of them counted yet) to the three tables.

        Returns ``(orders counted, companies touched, products sold)``.
        """
        cr = self.env.cr
        now = fields.Datetime.now()
        line_filter = self._line_filter()
        cr.execute(SQL(
            """
            DROP TABLE IF EXISTS drip_reco_orders;
            DROP TABLE IF EXISTS drip_reco_lines;
            CREATE TEMP TABLE drip_reco_orders AS %(orders)s;
            CREATE TEMP TABLE drip_reco_lines AS
                SELECT DISTINCT o.order_id, o.company_id, o.partner_id, o.date_order,
                       l.product_id
                  FROM drip_reco_orders o
                  JOIN sale_order_line l ON l.order_id = o.order_id
                 WHERE %(line_filter)s;
            ANALYZE drip_reco_orders;
            ANALYZE drip_reco_lines;
            """,
            orders=orders_sql, line_filter=line_filter,
        ))
        cr.execute("SELECT count(*), array_agg(DISTINCT company_id) FROM drip_reco_orders")
        counted, companies = cr.fetchone()
        if not counted:
            return 0, [], []
        cr.execute("SELECT array_agg(DISTINCT product_id) FROM drip_reco_lines")
        products = cr.fetchone()[0] or []
        # Per product: orders added, customers new to it, customers crossing 2 orders of
        # it; "before" is the counted history of this batch's customers only.
        cr.execute(SQL(
            """
            WITH batch AS (
                SELECT company_id, partner_id, product_id, count(*) AS n_new,
                       max(date_order) AS last_at
                  FROM drip_reco_lines
                 GROUP BY company_id, partner_id, product_id
            ), prior AS (
                SELECT d.company_id, d.partner_id, l.product_id,
                       count(DISTINCT d.order_id) AS n_old
                  FROM drip_product_affinity_order d
                  JOIN sale_order_line l ON l.order_id = d.order_id
                 WHERE d.partner_id IN (SELECT DISTINCT partner_id FROM drip_reco_orders)
                   AND %(line_filter)s
                 GROUP BY d.company_id, d.partner_id, l.product_id
            ), delta AS (
                SELECT b.company_id, b.product_id, sum(b.n_new) AS orders,
                       count(*) FILTER (WHERE p.n_old IS NULL) AS customers,
                       count(*) FILTER (WHERE COALESCE(p.n_old, 0) < 2
                                          AND COALESCE(p.n_old, 0) + b.n_new >= 2) AS repeaters,
                       max(b.last_at) AS last_at
                  FROM batch b
                  LEFT JOIN prior p USING (company_id, partner_id, product_id)
                 GROUP BY b.company_id, b.product_id
            )
            INSERT INTO drip_product_stat AS s (
                company_id, product_id, categ_id, order_count, customer_count,
                repeat_customer_count, repeat_rate, last_sold_at, updated_at)
            SELECT d.company_id, d.product_id, t.categ_id, d.orders, d.customers, d.repeaters,
                   d.repeaters::float / NULLIF(d.customers, 0), d.last_at, %(now)s
              FROM delta d
              JOIN product_product pp ON pp.id = d.product_id
              JOIN product_template t ON t.id = pp.product_tmpl_id
            ON CONFLICT (company_id, product_id) DO UPDATE SET
                categ_id = EXCLUDED.categ_id,
                order_count = s.order_count + EXCLUDED.order_count,
                customer_count = s.customer_count + EXCLUDED.customer_count,
                repeat_customer_count = s.repeat_customer_count + EXCLUDED.repeat_customer_count,
                repeat_rate = (s.repeat_customer_count + EXCLUDED.repeat_customer_count)::float
                              / NULLIF(s.customer_count + EXCLUDED.customer_count, 0),
                last_sold_at = GREATEST(s.last_sold_at, EXCLUDED.last_sold_at),
                updated_at = EXCLUDED.updated_at
            """,
            line_filter=self._line_filter("l"), now=now,
        ))
        # The ledger first: the lift of the pairs below uses the new order totals. The
        # lift of a pair this batch touches is written with its support (``EXCLUDED.lift``
        # carries lift per unit of support); ``_update_lift`` refreshes the others.
        cr.execute(SQL(
            """
            INSERT INTO drip_product_affinity_order (
                order_id, company_id, partner_id, date_order, counted_at)
            SELECT order_id, company_id, partner_id, date_order, %(now)s FROM drip_reco_orders
            ON CONFLICT (order_id) DO NOTHING;

            WITH baskets AS (
                SELECT order_id FROM drip_reco_lines
                 GROUP BY order_id HAVING count(*) BETWEEN 2 AND %(max_basket)s
            ), totals AS (
                SELECT company_id, count(*)::float AS n
                  FROM drip_product_affinity_order
                 WHERE company_id = ANY(%(companies)s)
                 GROUP BY company_id
            ), pairs AS (
                SELECT a.company_id, a.product_id AS product_a_id,
                       b.product_id AS product_b_id, count(*) AS support
                  FROM drip_reco_lines a
                  JOIN baskets k ON k.order_id = a.order_id
                  JOIN drip_reco_lines b ON b.order_id = a.order_id
                       AND b.product_id <> a.product_id
                 GROUP BY a.company_id, a.product_id, b.product_id
            )
            INSERT INTO drip_product_affinity AS f (
                company_id, product_a_id, product_b_id, support, lift, updated_at)
            SELECT p.company_id, p.product_a_id, p.product_b_id, p.support,
                   p.support * t.n / (sa.order_count * sb.order_count), %(now)s
              FROM pairs p
              JOIN totals t ON t.company_id = p.company_id
              JOIN drip_product_stat sa ON sa.company_id = p.company_id
                   AND sa.product_id = p.product_a_id
              JOIN drip_product_stat sb ON sb.company_id = p.company_id
                   AND sb.product_id = p.product_b_id
            ON CONFLICT (company_id, product_a_id, product_b_id) DO UPDATE SET
                support = f.support + EXCLUDED.support,
                lift = EXCLUDED.lift / EXCLUDED.support * (f.support + EXCLUDED.support),
                updated_at = EXCLUDED.updated_at;

            DROP TABLE drip_reco_orders;
            DROP TABLE drip_reco_lines;
            """,
            max_basket=MAX_BASKET, now=now, companies=companies,
        ))
        if counted >= ANALYZE_AFTER:
            # Fresh statistics for the planner of the render-time read (autovacuum would
            # get there, later): a stale estimate turns its joins into nested loops.
            cr.execute("ANALYZE drip_product_affinity; ANALYZE drip_product_stat; "
                       "ANALYZE drip_product_affinity_order")
        return counted, companies, products

    @api.model
    def _update_lift(self, companies, products=None):
        """Lift of the pairs of ``companies`` with one of ``products`` (all pairs when
        None) from the stored counts, never an order rescan; only rows that moved by more
        than ``LIFT_TOLERANCE`` are rewritten.

        A pair is refreshed whenever one of its products sells again; the others keep the
        order total of their last refresh, within ``LIFT_TOLERANCE`` (``_refresh_lift``).
        """
        if not companies:
            return
        if products is None:
            scope = SQL("SELECT id FROM drip_product_affinity WHERE company_id = ANY(%s)",
                        list(companies))
        else:
            scope = SQL(
                """
                SELECT id FROM drip_product_affinity
                 WHERE company_id = ANY(%(companies)s) AND product_a_id = ANY(%(products)s)
                 UNION
                SELECT id FROM drip_product_affinity
                 WHERE company_id = ANY(%(companies)s) AND product_b_id = ANY(%(products)s)
                """,
                companies=list(companies), products=list(products),
            )
        self.env.cr.execute(SQL(
            """
            WITH totals AS (
                SELECT company_id, count(*)::float AS n
                  FROM drip_product_affinity_order
                 WHERE company_id = ANY(%(companies)s)
                 GROUP BY company_id
            ), fresh AS (
                SELECT f.id, f.support * t.n / (sa.order_count * sb.order_count) AS lift
                  FROM (%(scope)s) s
                  JOIN drip_product_affinity f ON f.id = s.id
                  JOIN totals t ON t.company_id = f.company_id
                  JOIN drip_product_stat sa ON sa.company_id = f.company_id
                       AND sa.product_id = f.product_a_id
                  JOIN drip_product_stat sb ON sb.company_id = f.company_id
                       AND sb.product_id = f.product_b_id
                 WHERE sa.order_count > 0 AND sb.order_count > 0
            )
            UPDATE drip_product_affinity f SET lift = fresh.lift
              FROM fresh
             WHERE f.id = fresh.id AND abs(f.lift - fresh.lift) > %(tolerance)s * fresh.lift
            """,
            companies=list(companies), tolerance=LIFT_TOLERANCE, scope=scope,
        ))

    @api.model
    def _refresh_lift(self, companies, products):
        """After a count: the pairs of the products sold, or every pair of a company
        whose order total grew by more than ``LIFT_TOLERANCE`` since its last full
        refresh, so that no stored lift drifts further than that."""
        if not companies:
            return
        params = self.env["ir.config_parameter"].sudo()
        self.env.cr.execute(
            "SELECT company_id, count(*) FROM drip_product_affinity_order "
            "WHERE company_id = ANY(%s) GROUP BY company_id", [list(companies)])
        full, partial = [], []
        for company_id, total in self.env.cr.fetchall():
            key = LIFT_TOTAL_KEY % company_id
            last = float(params.get_param(key) or 0)
            if total > last * (1 + LIFT_TOLERANCE):
                full.append(company_id)
                params.set_param(key, str(total))
            else:
                partial.append(company_id)
        self._update_lift(full)
        self._update_lift(partial, products)

    @api.model
    def _update_from_orders(self, limit=BATCH_ORDERS, now=None):
        """Count the orders confirmed since the watermark; return ``(counted, remaining)``.

        A first run (no watermark yet) counts the whole history, in batches.
        """
        now = now or fields.Datetime.now()
        if not self._lock():
            _logger.info("drip: product statistics are being updated by another worker")
            return 0, 0
        params = self.env["ir.config_parameter"].sudo()
        raw = params.get_param(WATERMARK_KEY)
        since = fields.Datetime.to_datetime(raw) if raw else None
        self._flush_sources()
        since_sql = SQL("AND o.date_order >= %s", since - WATERMARK_OVERLAP) if since else SQL()
        limit_sql = SQL("LIMIT %s", limit) if limit else SQL()
        counted, companies, products = self._count_orders(SQL(
            """
            SELECT o.id AS order_id, o.company_id, o.partner_id, o.date_order
              FROM sale_order o
             WHERE o.state = 'sale' %(since)s
               AND NOT EXISTS (SELECT 1 FROM drip_product_affinity_order d
                                WHERE d.order_id = o.id)
             ORDER BY o.date_order, o.id
             %(limit)s
            """,
            since=since_sql, limit=limit_sql,
        ))
        self._refresh_lift(companies, products)
        remaining = 0
        if limit and counted >= limit:
            # Not caught up: resume from the last order counted (the ledger skips the
            # ones already counted at that same instant).
            self.env.cr.execute(
                "SELECT max(date_order) FROM drip_product_affinity_order"
            )
            watermark = self.env.cr.fetchone()[0] + WATERMARK_OVERLAP
            self.env.cr.execute(SQL(
                """
                SELECT count(*) FROM sale_order o
                 WHERE o.state = 'sale' AND o.date_order >= %s
                   AND NOT EXISTS (SELECT 1 FROM drip_product_affinity_order d
                                    WHERE d.order_id = o.id)
                """,
                watermark - WATERMARK_OVERLAP,
            ))
            remaining = self.env.cr.fetchone()[0]
        else:
            watermark = now
        params.set_param(WATERMARK_KEY, fields.Datetime.to_string(min(watermark, now)))
        self.invalidate_model()
        self.env["drip.product.stat"].invalidate_model()
        return counted, remaining

    @api.model
    def _clear(self):
        """Forget every count: the next pass recounts the whole history."""
        self.env.cr.execute(
            """
            DELETE FROM drip_product_affinity;
            DELETE FROM drip_product_stat;
            DELETE FROM drip_product_affinity_order;
            """
        )
        params = self.env["ir.config_parameter"].sudo()
        params.set_param(WATERMARK_KEY, False)
        params.search([("key", "=like", LIFT_TOTAL_KEY % "%")]).unlink()
        self.invalidate_model()
        self.env["drip.product.stat"].invalidate_model()

    @api.model
    def _rebuild(self):
        """Recount everything from the confirmed orders in this transaction (forgets
        cancelled ones); the weekly cron does the same in bounded batches."""
        if not self._lock():
            _logger.info("drip: product statistics are being updated by another worker")
            return 0
        self._clear()
        # Advisory locks are re-entrant within a session: the count below takes it again.
        counted, _remaining = self._update_from_orders(limit=None)
        return counted

    @api.model
    def _cron_update(self):
        counted, remaining = self._update_from_orders()
        self.env["ir.cron"]._notify_progress(done=counted, remaining=remaining)

    @api.model
    def _cron_rebuild(self):
        """The weekly recount, in bounded batches that commit (the cron re-runs while
        orders remain, within the cron time limit of a large store): the first call
        clears, the next ones count from the oldest order on, like a first run."""
        params = self.env["ir.config_parameter"].sudo()
        if not params.get_param(REBUILD_KEY):
            if not self._lock():
                return
            self._clear()
            params.set_param(REBUILD_KEY, fields.Datetime.to_string(fields.Datetime.now()))
        counted, remaining = self._update_from_orders()
        if not remaining:
            params.set_param(REBUILD_KEY, False)
        self.env["ir.cron"]._notify_progress(done=counted, remaining=remaining)

    # ------------------------------------------------------------------- reading
    @api.model
    def _product_filter(self):
        """SQL conditions on ``pp`` / ``t`` (product, template) and ``c.company_id``:
        sellable, active, published and in stock where those apps are installed."""
        template_fields = self.env["product.template"]._fields
        conditions = [
            SQL("pp.active AND t.active AND t.sale_ok"),
            SQL("(t.company_id IS NULL OR t.company_id = c.company_id)"),
        ]
        if "is_published" in template_fields and template_fields["is_published"].store:
            conditions.append(SQL("t.is_published IS TRUE"))
        if "is_storable" in template_fields and "stock.quant" in self.env:
            conditions.append(SQL(
                """
                (t.is_storable IS NOT TRUE OR COALESCE((
                    SELECT sum(q.quantity - q.reserved_quantity)
                      FROM stock_quant q
                      JOIN stock_location sl ON sl.id = q.location_id
                     WHERE q.product_id = pp.id AND sl.usage = 'internal'
                       AND q.company_id = c.company_id), 0) > 0)
                """
            ))
        return SQL(" AND ").join(conditions)

    @api.model
    def _flush_for_read(self):
        self.env["sale.order"].flush_model(["state", "partner_id", "company_id", "date_order"])
        self.env["sale.order.line"].flush_model(["product_id", "order_id", "display_type"])
        self.env["product.product"].flush_model(["active", "product_tmpl_id"])
        self.env["product.template"].flush_model()
        if "stock.quant" in self.env:
            self.env["stock.quant"].flush_model()
            self.env["stock.location"].flush_model(["usage"])

    @api.model
    def _recommend_ids(self, requests, limit=4):
        """Ranked product ids for many customers in ONE query.

        ``requests`` are ``(partner_id, company_id, seed product ids)``; returns
        ``{(partner_id, company_id): [(product_id, source), ...]}``, best first.
        """
        if not requests or limit <= 0:
            return {}
        settings = self._settings()
        partners, companies = [], []
        seed_partners, seed_companies, seed_products = [], [], []
        for partner_id, company_id, seeds in requests:
            partners.append(partner_id)
            companies.append(company_id)
            for product_id in seeds or ():
                seed_partners.append(partner_id)
                seed_companies.append(company_id)
                seed_products.append(product_id)
        self._flush_for_read()
        template_fields = self.env["product.template"]._fields
        repeat_flag = SQL("t.drip_repeat_purchase") if "drip_repeat_purchase" in (
            template_fields) else SQL("'auto'")
        self.env.cr.execute(SQL(
            """
            WITH req AS (
                SELECT DISTINCT partner_id, company_id
                  FROM unnest(%(partners)s::int[], %(companies)s::int[])
                       AS r(partner_id, company_id)
            ), explicit AS (
                SELECT DISTINCT partner_id, company_id, product_id
                  FROM unnest(%(seed_partners)s::int[], %(seed_companies)s::int[],
                              %(seed_products)s::int[]) AS s(partner_id, company_id, product_id)
            ), bought AS (
                SELECT r.partner_id, r.company_id, l.product_id,
                       count(DISTINCT o.id) AS orders, max(o.date_order) AS last_at
                  FROM req r
                  JOIN sale_order o ON o.partner_id = r.partner_id
                       AND o.company_id = r.company_id AND o.state = 'sale'
                  JOIN sale_order_line l ON l.order_id = o.id
                 WHERE %(line_filter)s
                 GROUP BY r.partner_id, r.company_id, l.product_id
            ), seeds AS (
                SELECT partner_id, company_id, product_id, 1 AS tier FROM explicit
                 UNION ALL
                SELECT partner_id, company_id, product_id, 2 AS tier
                  FROM (SELECT b.*, row_number() OVER (
                                   PARTITION BY b.partner_id, b.company_id
                                   ORDER BY b.last_at DESC, b.product_id) AS rn
                          FROM bought b) h
                 WHERE h.rn <= %(history_seeds)s
            ), together AS (
                SELECT s.partner_id, s.company_id, f.product_b_id AS product_id, s.tier,
                       0 AS sub, f.lift AS score
                  FROM seeds s
                  CROSS JOIN LATERAL (
                        SELECT f.product_b_id, f.lift
                          FROM drip_product_affinity f
                         WHERE f.company_id = s.company_id AND f.product_a_id = s.product_id
                           AND f.support >= %(min_support)s
                         ORDER BY f.lift DESC, f.product_b_id
                         LIMIT %(per_source)s) f
            ), categories AS (
                SELECT w.partner_id, w.company_id, w.categ_id,
                       row_number() OVER (PARTITION BY w.partner_id, w.company_id
                                          ORDER BY w.weight DESC, w.categ_id) AS rank
                  FROM (SELECT x.partner_id, x.company_id, t.categ_id, sum(x.weight) AS weight
                          FROM (SELECT partner_id, company_id, product_id, orders AS weight
                                  FROM bought
                                 UNION ALL
                                SELECT partner_id, company_id, product_id, 1 FROM explicit) x
                          JOIN product_product pp ON pp.id = x.product_id
                          JOIN product_template t ON t.id = pp.product_tmpl_id
                         GROUP BY x.partner_id, x.company_id, t.categ_id) w
            ), category_best AS (
                SELECT c.partner_id, c.company_id, st.product_id, 3 AS tier, c.rank AS sub,
                       st.order_count::float AS score
                  FROM categories c
                  CROSS JOIN LATERAL (
                        SELECT st.product_id, st.order_count
                          FROM drip_product_stat st
                         WHERE st.company_id = c.company_id AND st.categ_id = c.categ_id
                         ORDER BY st.order_count DESC, st.product_id
                         LIMIT %(per_source)s) st
                 WHERE c.rank <= %(categories)s
            ), store_best AS (
                -- the store's best sellers, read once per company
                SELECT c.company_id, st.product_id, st.order_count
                  FROM (SELECT DISTINCT company_id FROM req) c
                  CROSS JOIN LATERAL (
                        SELECT st.product_id, st.order_count
                          FROM drip_product_stat st
                         WHERE st.company_id = c.company_id
                         ORDER BY st.order_count DESC, st.product_id
                         LIMIT %(per_best)s) st
            ), best AS (
                SELECT r.partner_id, r.company_id, b.product_id, 4 AS tier, 0 AS sub,
                       b.order_count::float AS score
                  FROM req r JOIN store_best b ON b.company_id = r.company_id
            ), candidates AS (
                -- each product once per customer, from its best source
                SELECT DISTINCT ON (u.partner_id, u.company_id, u.product_id) u.*
                  FROM (SELECT * FROM together
                         UNION ALL SELECT * FROM category_best
                         UNION ALL SELECT * FROM best) u
                 ORDER BY u.partner_id, u.company_id, u.product_id, u.tier, u.sub, u.score DESC
            ), offerable AS MATERIALIZED (
                -- product-level rules, once per distinct product and company
                SELECT c.company_id, c.product_id, pp.product_tmpl_id,
                       (%(repeat_flag)s = 'yes' OR (%(repeat_flag)s = 'auto'
                        AND COALESCE(st.customer_count, 0) >= %(repeat_min)s
                        AND COALESCE(st.repeat_rate, 0) >= %(repeat_rate)s)) AS repeatable
                  FROM (SELECT DISTINCT company_id, product_id FROM candidates) c
                  JOIN product_product pp ON pp.id = c.product_id
                  JOIN product_template t ON t.id = pp.product_tmpl_id
                  LEFT JOIN drip_product_stat st ON st.company_id = c.company_id
                       AND st.product_id = c.product_id
                 WHERE %(product_filter)s
            ), eligible AS (
                SELECT DISTINCT ON (c.partner_id, c.company_id, o.product_tmpl_id)
                       c.partner_id, c.company_id, c.product_id, c.tier, c.sub, c.score
                  FROM candidates c
                  JOIN offerable o ON o.company_id = c.company_id AND o.product_id = c.product_id
                 WHERE NOT EXISTS (
                           SELECT 1 FROM explicit e
                             JOIN product_product ep ON ep.id = e.product_id
                            WHERE e.partner_id = c.partner_id AND e.company_id = c.company_id
                              AND ep.product_tmpl_id = o.product_tmpl_id)
                   AND (o.repeatable OR NOT EXISTS (
                           SELECT 1 FROM bought b
                            WHERE b.partner_id = c.partner_id AND b.company_id = c.company_id
                              AND b.product_id = c.product_id))
                 ORDER BY c.partner_id, c.company_id, o.product_tmpl_id,
                          c.tier, c.sub, c.score DESC, c.product_id
            ), ranked AS (
                SELECT e.*, row_number() OVER (
                           PARTITION BY e.partner_id, e.company_id
                           ORDER BY e.tier, e.sub, e.score DESC, e.product_id) AS rn
                  FROM eligible e
            )
            SELECT partner_id, company_id, product_id, tier
              FROM ranked WHERE rn <= %(limit)s
             ORDER BY partner_id, company_id, rn
            """,
            partners=partners, companies=companies, seed_partners=seed_partners,
            seed_companies=seed_companies, seed_products=seed_products,
            line_filter=self._line_filter("l"), history_seeds=HISTORY_SEEDS,
            min_support=settings["min_support"], per_source=CANDIDATES_PER_SOURCE,
            categories=FAVOURITE_CATEGORIES, per_best=CANDIDATES_PER_SOURCE + limit,
            repeat_flag=repeat_flag, repeat_min=settings["repeat_min_customers"],
            repeat_rate=settings["repeat_rate"], product_filter=self._product_filter(),
            limit=limit,
        ))
        result = {(partner_id, company_id): [] for partner_id, company_id, _seeds in requests}
        for partner_id, company_id, product_id, tier in self.env.cr.fetchall():
            result[(partner_id, company_id)].append((product_id, SOURCES[tier]))
        return result

    @api.model
    def _recommend(self, partners, limit=4, seed_products=None, company=None):
        """``{partner_id: [{name, url, image_url, price, currency, …}]}`` for a batch.

        ``seed_products``: products the message is about (viewed, in the cart), either
        one recordset for every partner or ``{partner_id: product recordset}``. One SQL
        read for the ranking, then prices per pricelist for the whole batch.
        """
        company = company or self.env.company
        seeds = seed_products if isinstance(seed_products, dict) else {
            partner.id: seed_products for partner in partners}
        requests = [
            (partner.id, company.id, (seeds.get(partner.id) or self.env["product.product"]).ids)
            for partner in partners
        ]
        ranked = self._recommend_ids(requests, limit=limit)
        lines = {key[0]: value for key, value in ranked.items()}
        offers = self._offer_items(
            [(partner, company, [pid for pid, _s in lines.get(partner.id, [])])
             for partner in partners]
        )
        result = {}
        for partner in partners:
            items = offers.get((partner.id, company.id), {})
            result[partner.id] = [
                dict(items[pid], source=source)
                for pid, source in lines.get(partner.id, []) if pid in items
            ]
        return result

    # ---------------------------------------------------------------- plain data
    @api.model
    def _currency_data(self, currency):
        return {"name": currency.name, "symbol": currency.symbol,
                "position": currency.position, "decimals": currency.decimal_places}

    @api.model
    def _offer_items(self, wanted):
        """Plain data of products for customers, priced in each one's pricelist.

        ``wanted`` is ``[(partner, company, product ids)]``; returns
        ``{(partner_id, company_id): {product_id: {id, name, url, image_url, price,
        currency}}}``. Batched: one read of the products per language, the pricelists of
        all customers of a company at once, one price computation per pricelist.
        """
        Product = self.env["product.product"].sudo()
        all_ids = {pid for _p, _c, ids in wanted for pid in ids}
        if not all_ids:
            return {}
        products = Product.browse(sorted(all_ids)).with_context(active_test=False)
        has_url = "website_url" in Product._fields
        products.fetch(["product_tmpl_id", "uom_id"])
        # Pricelist of each customer, per company (Odoo's own resolution order).
        pricelists = {}
        for company, group in self._group(wanted, lambda row: row[1]).items():
            partner_ids = [row[0].id for row in group]
            found = self.env["product.pricelist"].sudo().with_company(company) \
                ._get_partner_pricelist_multi(partner_ids)
            for partner_id in partner_ids:
                pricelists[(partner_id, company.id)] = found.get(partner_id) or \
                    self.env["product.pricelist"]
        # One price computation per (pricelist, company) for the products it prices.
        prices = {}
        by_pricelist = self._group(wanted, lambda row: (pricelists[(row[0].id, row[1].id)],
                                                        row[1]))
        for (pricelist, company), group in by_pricelist.items():
            ids = sorted({pid for _p, _c, pids in group for pid in pids})
            currency = pricelist.currency_id or company.currency_id
            computed = pricelist.with_company(company)._get_products_price(
                Product.with_company(company).browse(ids), 1.0, currency=currency)
            for pid in ids:
                prices[(pricelist.id, company.id, pid)] = (currency.round(computed[pid]),
                                                           currency)
        # Names in each customer's language, and URLs.
        names = {}
        for lang, group in self._group(wanted, lambda row: row[0].lang or "en_US").items():
            ids = sorted({pid for _p, _c, pids in group for pid in pids})
            localised = Product.browse(ids).with_context(
                lang=lang, active_test=False, display_default_code=False)
            for product in localised:
                names[(lang, product.id)] = product.display_name
        base_urls = {}
        urls = {}
        if has_url:
            for product in products:
                urls[product.id] = product.website_url
        result = {}
        for partner, company, ids in wanted:
            base = base_urls.get(company.id)
            if base is None:
                base = base_urls[company.id] = partner.get_base_url().rstrip("/")
            pricelist = pricelists[(partner.id, company.id)]
            lang = partner.lang or "en_US"
            entry = result.setdefault((partner.id, company.id), {})
            for pid in ids:
                price, currency = prices[(pricelist.id, company.id, pid)]
                path = urls.get(pid) or f"/odoo/product.product/{pid}"
                entry[pid] = {
                    "id": pid,
                    "name": names[(lang, pid)],
                    "url": path if path.startswith("http") else f"{base}{path}",
                    "image_url": f"{base}/web/image/product.product/{pid}/image_256",
                    "price": price,
                    "currency": self._currency_data(currency),
                }
        return result

    @staticmethod
    def _group(rows, key):
        groups = {}
        for row in rows:
            groups.setdefault(key(row), []).append(row)
        return groups


class DripProductStat(models.Model):
    """Per company and product: what the recommendations need to know about its sales."""

    _name = "drip.product.stat"
    _description = "Drip Marketing Product Sales Statistics"
    _order = "company_id, order_count desc"
    _rec_name = "product_id"
    _log_access = False

    company_id = fields.Many2one("res.company", required=True, ondelete="cascade",
                                 readonly=True)
    product_id = fields.Many2one("product.product", required=True, ondelete="cascade",
                                 readonly=True)
    categ_id = fields.Many2one("product.category", string="Category", ondelete="set null",
                               readonly=True)
    order_count = fields.Integer(string="Orders", readonly=True)
    customer_count = fields.Integer(string="Customers", readonly=True)
    repeat_customer_count = fields.Integer(
        string="Repeat customers", readonly=True,
        help="Customers who bought it in at least two orders.")
    repeat_rate = fields.Float(
        readonly=True,
        help="Share of its customers who bought it again: a repeat-purchase product "
        "above the configured rate may be recommended to someone who already bought it.")
    last_sold_at = fields.Datetime(readonly=True)
    updated_at = fields.Datetime(readonly=True)

    _sql_constraints = [
        ("product_unique", "UNIQUE(company_id, product_id)",
         "A product has one statistics row per company."),
    ]

    def init(self):
        # Best sellers of a category, and of the whole store, in one index range each.
        self.env.cr.execute(
            """
            CREATE INDEX IF NOT EXISTS drip_product_stat_category_idx
                ON drip_product_stat (company_id, categ_id, order_count DESC, product_id);
            CREATE INDEX IF NOT EXISTS drip_product_stat_best_idx
                ON drip_product_stat (company_id, order_count DESC, product_id);
            """
        )


class DripProductAffinityOrder(models.Model):
    """The ledger of confirmed orders already counted in the product statistics."""

    _name = "drip.product.affinity.order"
    _description = "Drip Marketing Order Counted for Recommendations"
    _rec_name = "order_id"
    _log_access = False

    order_id = fields.Many2one("sale.order", required=True, ondelete="cascade", readonly=True)
    company_id = fields.Many2one("res.company", required=True, ondelete="cascade",
                                 readonly=True, index=True)
    partner_id = fields.Many2one("res.partner", ondelete="cascade", readonly=True, index=True)
    date_order = fields.Datetime(readonly=True)
    counted_at = fields.Datetime(readonly=True)

    _sql_constraints = [
        ("order_unique", "UNIQUE(order_id)", "An order is counted once."),
    ]
