import random
from datetime import timedelta

from odoo import api, fields, models


class DripDemo(models.AbstractModel):
    """Demo data that needs code: a month of delivery history, so the reports, the
    funnel, the dashboard and the customer timelines have something to show."""

    _name = "drip.demo"
    _description = "Drip Marketing Demo Data"

    @api.model
    def _load_history(self, days=30, seed=42):
        """A running copy of the ready-made abandoned-cart journey with ``days`` of history.

        Demo customers with an email left carts; the first reminder went out an hour later,
        some were opened and clicked, a few got the last reminder, two bought (the order
        is confirmed and attributed to the message that was clicked), one unsubscribed,
        one reminder bounced, two customers were in the holdout. Dates are spread over the
        past ``days`` days from a fixed seed, so every demo database shows the same shape.
        Written through the ORM as the engine would have left it; nothing is sent.
        """
        rng = random.Random(seed)
        now = fields.Datetime.now().replace(microsecond=0)
        shipped = self.env.ref("drip_marketing.journey_abandoned_cart")
        journey = shipped.copy({"name": self.env._("Abandoned cart (last month)"),
                                "holdout_percent": 10})
        first, last = journey.root_step_ids, journey.step_ids - journey.root_step_ids
        product = self.env.ref("product.product_product_4", raise_if_not_found=False) or (
            self.env["product.product"].search([("sale_ok", "=", True)], limit=1))
        partners = self.env["res.partner"].search(
            [("email", "!=", False), ("is_company", "=", False),
             ("id", "!=", self.env.ref("base.partner_admin").id)], order="id", limit=14)
        Enrollment, Message = self.env["drip.enrollment"], self.env["drip.message"]
        orders_to_attribute = []
        for index, partner in enumerate(partners):
            entered = now - timedelta(days=rng.uniform(1, days), hours=rng.uniform(0, 12))
            cart = self.env["sale.order"].create({
                "partner_id": partner.id, "drip_is_cart": True,
                "order_line": [(0, 0, {"product_id": product.id,
                                       "product_uom_qty": rng.randint(1, 3)})],
            })
            holdout = index in (3, 9)
            enrollment = Enrollment.create({
                "journey_id": journey.id, "partner_id": partner.id,
                "source_ref": f"sale.order,{cart.id}", "trigger_ref": f"sale.order,{cart.id}",
                "order_id": cart.id, "entered_at": entered, "is_holdout": holdout,
            })
            sent_at = entered + timedelta(hours=1)
            reminder = Message.create({
                "enrollment_id": enrollment.id, "step_id": first.id, "channel": "email",
                "scheduled_at": sent_at, "due_at": sent_at,
                **({"state": "skipped", "skip_reason": "holdout"} if holdout else {
                    "state": "sent", "sent_at": sent_at, "recipient": partner.email,
                    "subject": f"{partner.name.split(' ')[0]}, you left something in your cart",
                }),
            })
            if holdout:
                enrollment.write({"state": "completed"})
                continue
            opened = rng.random() < 0.65
            clicked = opened and rng.random() < 0.5
            engagement = {}
            if opened:
                engagement["opened_at"] = sent_at + timedelta(minutes=rng.randint(5, 300))
            if clicked:
                engagement["clicked_at"] = engagement["opened_at"] + timedelta(minutes=2)
            if index == 5:
                engagement["unsubscribed_at"] = sent_at + timedelta(hours=2)
            if index == 7:
                engagement = {"bounced_at": sent_at + timedelta(minutes=1)}
            reminder.write(engagement)
            if clicked and len(orders_to_attribute) < 2:
                orders_to_attribute.append((cart, engagement["clicked_at"] + timedelta(hours=1)))
                enrollment.write({"state": "exited", "exit_reason": "goal_reached",
                                  "exited_at": engagement["clicked_at"] + timedelta(hours=1)})
                continue
            second_at = sent_at + timedelta(hours=24)
            if second_at < now and index not in (5, 7):
                Message.create({
                    "enrollment_id": enrollment.id, "step_id": last.id, "channel": "email",
                    "parent_message_id": reminder.id,
                    "scheduled_at": second_at, "due_at": second_at, "state": "sent",
                    "sent_at": second_at, "recipient": partner.email,
                    "subject": "Your cart is about to expire",
                })
                enrollment.write({"state": "completed", "exited_at": second_at})
            elif index in (5, 7):
                enrollment.write({"state": "exited", "exit_reason": "unsubscribed"
                                  if index == 5 else "completed", "exited_at": sent_at})
        for cart, confirmed_at in orders_to_attribute:
            cart.action_confirm()
            cart.date_order = confirmed_at
            cart._drip_attribute()
        journey.write({"state": "running", "activated_at": now - timedelta(days=days + 1),
                       "scan_watermark": now})
        self.env["drip.funnel.report"]._refresh(full=True)
        return journey
