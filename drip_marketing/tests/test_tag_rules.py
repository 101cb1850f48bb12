from odoo.tests import TransactionCase, tagged


@tagged("post_install", "-at_install")
class TestTagRules(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        Partner = cls.env["res.partner"]
        cls.vip = cls.env["res.partner.category"].create({"name": "VIP (test)"})
        cls.manual = cls.env["res.partner.category"].create({"name": "Met at the fair"})
        cls.rich, cls.poor, cls.hand_tagged = Partner.create([
            {"name": "Rich", "ref": "TAGTEST", "drip_order_count": 9},
            {"name": "Poor", "ref": "TAGTEST", "drip_order_count": 1},
            {"name": "Hand tagged", "ref": "TAGTEST", "drip_order_count": 9,
             "category_id": [(4, cls.vip.id), (4, cls.manual.id)]},
        ])
        cls.rule = cls.env["drip.tag.rule"].create({
            "name": "Frequent buyers",
            "tag_id": cls.vip.id,
            "domain": "[('ref', '=', 'TAGTEST'), ('drip_order_count', '>=', 5)]",
        })

    def test_adds_and_removes_only_its_own_tags(self):
        self.env["drip.tag.rule"]._cron_sync_tags()
        self.assertIn(self.vip, self.rich.category_id)
        self.assertNotIn(self.vip, self.poor.category_id)
        self.assertEqual(self.rule.tagged_partner_ids, self.rich,
                         "a tag set by hand is not the rule's")
        self.assertTrue(self.rule.synced_at)
        tag_events = self.env["drip.event"].search([
            ("event_type_id", "=", self.env.ref("drip_marketing.event_type_tag_added").id),
            ("partner_id", "in", (self.rich | self.poor | self.hand_tagged).ids),
        ])
        self.assertEqual(tag_events.partner_id, self.rich)
        self.assertEqual(tag_events.payload, {"tag_id": self.vip.id, "rule_id": self.rule.id})

        # Everyone stops matching: the rule's own tag goes, the hand-set one stays.
        (self.rich | self.hand_tagged).write({"drip_order_count": 0})
        self.poor.drip_order_count = 6
        self.env["drip.tag.rule"]._cron_sync_tags()
        self.assertNotIn(self.vip, self.rich.category_id)
        self.assertIn(self.vip, self.poor.category_id)
        self.assertEqual(self.hand_tagged.category_id, self.vip | self.manual)
        self.assertEqual(self.rule.tagged_partner_ids, self.poor)

        # A second sync changes nothing and records no second event.
        self.env["drip.tag.rule"]._cron_sync_tags()
        self.assertEqual(self.rule.tagged_partner_ids, self.poor)
        self.assertEqual(self.env["drip.event"].search_count([
            ("event_type_id", "=", self.env.ref("drip_marketing.event_type_tag_added").id),
            ("partner_id", "=", self.poor.id),
        ]), 1)

    def test_two_rules_share_a_tag_and_archiving_gives_it_back(self):
        other = self.env["drip.tag.rule"].create({
            "name": "Named Rich",
            "tag_id": self.vip.id,
            "domain": "[('ref', '=', 'TAGTEST'), ('name', '=', 'Rich')]",
        })
        (self.rule | other)._sync_tags()
        self.assertEqual(self.rule.tagged_partner_ids, self.rich)
        self.assertEqual(other.tagged_partner_ids, self.rich, "co-owned, not hand-set")
        self.rich.drip_order_count = 0
        self.rule._sync_tags()
        self.assertIn(self.vip, self.rich.category_id, "the other rule still asserts it")
        other.active = False
        self.assertNotIn(self.vip, self.rich.category_id)
        self.assertIn(self.vip, self.hand_tagged.category_id)

    def test_other_company_customers_are_not_tagged(self):
        company = self.env["res.company"].create({"name": "Elsewhere"})
        self.rich.company_id = company
        self.rule._sync_tags()
        self.assertNotIn(self.vip, self.rich.category_id)
