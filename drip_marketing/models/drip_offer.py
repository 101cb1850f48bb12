"""Personal offers in message templates: recommendations, the product, a coupon.

``drip.delivery`` builds the plain render context of a batch of messages; it then calls
this model ONCE for the whole batch::

    self.env["drip.offer"]._add_offers(items, contexts)

which sets on every context:

=====================  =====================================================================
key                    content
=====================  =====================================================================
``recommendations``    ``[{id, name, url, image_url, price, currency, source}]`` — see
                       ``drip.product.affinity._recommend_ids`` for the ranking and the
                       exclusions; ``currency`` is ``{name, symbol, position, decimals}``
                       and the price is in the customer's pricelist (untaxed, like a
                       quotation line); empty unless the template uses them
``product``            the product the participant entered for (browse abandonment:
                       ``drip.event,<id>``; replenishment: ``sale.order,<id>,product,<pid>``)
                       as the same dict, or ``None``
``coupon``             ``{code, expires_at}`` when the step hands out a coupon (bridge
                       ``drip_marketing_loyalty``), else ``None``
``order.cross_sell``   the optional products of what the order bought, as the same dicts
                       (only when the template mentions ``cross_sell``)
=====================  =====================================================================

Cost per batch, whatever its size: one SQL read for every recommendation of the batch
(``_recommend_ids``), then the products' data and prices per pricelist and language
(``_offer_items``). Bridges extend ``_coupons_for`` (coupons) or ``_offers_for``.
"""

from odoo import api, models

RECOMMENDATIONS_SHOWN = 4


class DripOffer(models.AbstractModel):
    _name = "drip.offer"
    _description = "Drip Marketing Personal Offers"

    @api.model
    def _no_offer(self):
        return {"recommendations": [], "product": None, "coupon": None}

    @api.model
    def _add_offers(self, items, contexts):
        """Fill ``contexts`` (``{key: context}``) in place from ``items``, the tuples
        ``(key, partner, order, lang, journey, step, message)`` of
        ``drip.delivery._build_contexts``. ``message`` is ``None`` for previews."""
        offers = self._offers_for(items)
        for key, context in contexts.items():
            offer = offers.get(key) or self._no_offer()
            cross_sell = offer.pop("cross_sell", None)
            context.update(offer)
            if cross_sell is not None and context.get("order"):
                context["order"]["cross_sell"] = cross_sell
        return contexts

    @api.model
    def _offers_for(self, items):
        """``{key: {"recommendations": [...], "product": {...} | None,
        "coupon": {...} | None}}`` for a batch of context items."""
        result = {item[0]: self._no_offer() for item in items}
        # Steps without a template (webhook calls…) render nothing: no offer to prepare.
        items = [item for item in items if not item[5] or item[5].template_id]
        if not items:
            return result
        Message = self.env["drip.message"]
        messages = Message.browse([item[6].id for item in items if item[6]])
        sources = self._source_products(messages)
        requests, wanted_recos, rows = {}, set(), []
        for key, partner, order, _lang, _journey, step, message in items:
            company = self._company_of(partner, order, message)
            source = sources.get(message.id) if message else None
            rows.append((key, partner, company, source))
            if not self._uses(step, "recommendations"):
                continue
            seeds = requests.setdefault((partner.id, company.id), set())
            if source:
                seeds.add(source.id)
            if order:
                seeds.update(line.product_id.id for line in order.order_line
                             if line.product_id and not line.display_type)
            wanted_recos.add(key)
        cross_sell = {
            key: self._cross_sell_ids(order)
            for key, _partner, order, _lang, _journey, step, _message in items
            if order and self._uses(step, "cross_sell")
        }
        affinity = self.env["drip.product.affinity"].sudo()
        ranked = affinity._recommend_ids(
            [(pid, cid, sorted(seeds)) for (pid, cid), seeds in requests.items()],
            limit=RECOMMENDATIONS_SHOWN,
        )
        wanted = {}
        for key, partner, company, source in rows:
            ids = wanted.setdefault((partner, company), set())
            if key in wanted_recos:
                ids.update(pid for pid, _source in ranked.get((partner.id, company.id), []))
            if source:
                ids.add(source.id)
            ids.update(cross_sell.get(key, ()))
        data = affinity._offer_items(
            [(partner, company, sorted(ids)) for (partner, company), ids in wanted.items()
             if ids]
        )
        for key, partner, company, source in rows:
            products = data.get((partner.id, company.id), {})
            offer = result[key]
            if source and source.id in products:
                offer["product"] = products[source.id]
            if key in wanted_recos:
                offer["recommendations"] = [
                    dict(products[pid], source=origin)
                    for pid, origin in ranked.get((partner.id, company.id), [])
                    if pid in products
                ]
            if key in cross_sell:
                offer["cross_sell"] = [products[pid] for pid in cross_sell[key]
                                       if pid in products]
        coupons = self._coupons_for(messages)
        for key, *_rest, message in items:
            if message and message.id in coupons:
                result[key]["coupon"] = coupons[message.id]
        return result

    @api.model
    def _cross_sell_ids(self, order):
        """The optional products (sale's "Optional Products" on the product form) of
        what the order bought, minus what it bought, at most RECOMMENDATIONS_SHOWN:
        ``order.cross_sell`` in templates (post-purchase)."""
        bought = order.order_line.product_id
        optional = bought.product_tmpl_id.optional_product_ids.product_variant_ids
        return [pid for pid in optional.filtered("sale_ok").ids
                if pid not in bought.ids][:RECOMMENDATIONS_SHOWN]

    @api.model
    def _coupons_for(self, messages):
        """``{message_id: {"code": str, "expires_at": date}}`` for the messages that
        carry a coupon. None without a coupon app: ``drip_marketing_loyalty`` extends
        this (issuing the coupons once per participant and step)."""
        return {}

    @api.model
    def _company_of(self, partner, order, message):
        return ((message.company_id if message else None)
                or (order.company_id if order else None)
                or partner.company_id or self.env.company)

    @api.model
    def _uses(self, step, name):
        """Whether the step's template mentions ``name`` (a preview always gets it):
        messages that do not show recommendations do not pay for them."""
        if not step:
            return True
        template = step.template_id
        if not template:
            return False
        texts = [template.subject, template.body_html, template.body_text]
        for variant in template.variant_ids:
            texts += [variant.subject, variant.body_html, variant.body_text]
        return any(name in (text or "") for text in texts)

    @api.model
    def _source_products(self, messages):
        """``{message_id: product}`` of the messages whose participant entered for a
        product: a product view event (``drip.event,<id>``) or a replenishment
        (``sale.order,<id>,product,<pid>``). Archived products are left out."""
        if not messages:
            return {}
        messages.enrollment_id.fetch(["source_ref", "trigger_ref"])
        event_ids, product_of = {}, {}
        for message in messages:
            enrollment = message.enrollment_id
            parts = (enrollment.trigger_ref or enrollment.source_ref or "").split(",")
            if len(parts) == 2 and parts[0] == "drip.event" and parts[1].isdigit():
                event_ids[message.id] = int(parts[1])
            elif len(parts) == 4 and parts[2] == "product" and parts[3].isdigit():
                product_of[message.id] = int(parts[3])
        if event_ids:
            events = self.env["drip.event"].sudo().browse(sorted(set(event_ids.values())))
            events = events.exists()
            events.fetch(["product_id"])
            by_event = {event.id: event.product_id.id for event in events}
            for message_id, event_id in event_ids.items():
                if by_event.get(event_id):
                    product_of[message_id] = by_event[event_id]
        products = self.env["product.product"].sudo().browse(sorted(set(product_of.values())))
        products = products.with_context(active_test=False).exists()
        products.fetch(["active"])
        live = {product.id: product for product in products if product.active}
        return {mid: live[pid] for mid, pid in product_of.items() if pid in live}
