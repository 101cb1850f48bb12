"""Identity resolution, stitching and trait rules of set-based ingestion (drip.ingest)."""

from datetime import date, datetime, timedelta

from odoo.tests import TransactionCase, tagged

from ..models.drip_ingest import (
    decide_trait_updates,
    normalize_lang,
    plan_identities,
    trait_values,
)

T0 = datetime(2026, 11, 20, 9, 0, 0)


class TestPlanIdentities(TransactionCase):
    """The pure decision pass: no database involved."""

    def test_trust_order_decides_and_the_rest_conflicts(self):
        known = {("user_id", "u1"): 10, ("email", "a@x.com"): 20}
        plan = plan_identities(
            [{"ids": {"user_id": "u1", "email": "a@x.com", "anonymous_id": "d1"}}],
            known, "create",
        )
        self.assertEqual(plan["partners"], [10], "the user id outranks the email")
        self.assertEqual(plan["conflicts"], [("email", "a@x.com", 20, 10, 0)])
        self.assertEqual(plan["links"], [("anonymous_id", "d1", 10, 0)])
        self.assertEqual(known[("email", "a@x.com")], 20, "a conflict never moves the email")

    def test_earlier_event_of_the_batch_identifies_a_later_one(self):
        known = {}
        plan = plan_identities([
            {"ids": {"anonymous_id": "d1"}},
            {"ids": {"user_id": "u1", "anonymous_id": "d1"}},
            {"ids": {"anonymous_id": "d1"}},
        ], known, "create")
        self.assertEqual(plan["partners"], [None, -1, -1])
        self.assertEqual(plan["new"], [{"ids": {"user_id": "u1", "anonymous_id": "d1"},
                                         "index": 1}])

    def test_policies(self):
        events = [{"ids": {"user_id": "u1"}}, {"ids": {"email": "a@x.com"}},
                  {"ids": {"anonymous_id": "d1"}}]
        self.assertEqual(plan_identities(events, {}, "create")["partners"], [-1, -2, None])
        self.assertEqual(plan_identities(events, {}, "contact")["partners"], [None, -1, None])
        self.assertEqual(plan_identities(events, {}, "never")["partners"], [None, None, None])

    def test_alias(self):
        # Unknown previous id: linked as an anonymous id of the user's customer.
        plan = plan_identities([{"ids": {"user_id": "u1"}, "previous_id": "d9"}],
                               {("user_id", "u1"): 5}, "create")
        self.assertIn(("anonymous_id", "d9", 5, 0), plan["links"])
        # Known user id only through the previous id: the user id joins that customer.
        plan = plan_identities([{"ids": {"user_id": "u2"}, "previous_id": "d9"}],
                               {("anonymous_id", "d9"): 7}, "create")
        self.assertEqual(plan["partners"], [7])
        self.assertIn(("user_id", "u2", 7, 0), plan["links"])
        # Both known, to two customers: a conflict, no merge.
        plan = plan_identities([{"ids": {"user_id": "u1"}, "previous_id": "old"}],
                               {("user_id", "u1"): 5, ("user_id", "old"): 6}, "create")
        self.assertEqual(plan["partners"], [5])
        self.assertEqual(plan["conflicts"], [("user_id", "old", 6, 5, 0)])

    def test_trait_decisions(self):
        current = {"name": "Typed by a user", "lang": False, "drip_birthday": None,
                   "email": "old@x.com"}
        markers = {"email": "2026-11-20T09:00:00"}
        proposed = {
            "name": ("From the app", "2026-11-20T10:00:00"),
            "lang": ("zh_CN", "2026-11-20T10:00:00"),
            "email": ("new@x.com", "2026-11-20T10:00:00"),
            "drip_birthday": (None, "2026-11-20T10:00:00"),
        }
        updates, new_markers = decide_trait_updates(current, markers, proposed)
        self.assertEqual(updates, {"lang": "zh_CN", "email": "new@x.com"},
                         "a user's value is kept, empty fields are filled, marked ones move")
        self.assertEqual(new_markers["lang"], "2026-11-20T10:00:00")
        older = {"email": ("older@x.com", "2026-11-20T08:00:00")}
        self.assertEqual(decide_trait_updates(current, markers, older)[0], {},
                         "an older event never overwrites a newer value")

    def test_trait_values_and_languages(self):
        self.assertEqual(
            trait_values({"firstName": "San", "lastName": "Zhang", "birthday": "1990-05-17",
                          "locale": "zh-CN"}),
            {"name": "San Zhang", "drip_birthday": date(1990, 5, 17), "lang": "zh-CN"},
        )
        installed = ["en_US", "zh_CN", "zh_TW", "fr_BE", "fr_FR"]
        self.assertEqual(normalize_lang("zh-CN", installed), "zh_CN")
        self.assertEqual(normalize_lang("zh-Hant-TW", installed), "zh_TW")
        self.assertEqual(normalize_lang("zh-Hans", installed), "zh_CN")
        self.assertEqual(normalize_lang("fr", installed), "fr_BE")
        self.assertIsNone(normalize_lang("de-DE", installed))


@tagged("post_install", "-at_install")
class TestIdentityStitching(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.company = cls.env.company
        cls.company.drip_double_opt_in = False
        cls.source = cls.env["drip.source"].create({"name": "Web shop"})
        cls.viewed = cls.env.ref("drip_marketing.event_type_product_viewed")
        cls.Ingest = cls.env["drip.ingest"]
        cls.counter = 0

    def event(self, call_type="track", occurred=None, **values):
        type(self).counter += 1
        return dict({
            "call_type": call_type,
            "name": "Product Viewed" if call_type == "track" else call_type,
            "event_type_id": self.viewed.id if call_type == "track" else None,
            "idempotency_key": f"stitch-{self.counter}",
            "occurred_at": occurred or T0 + timedelta(minutes=self.counter),
            "ids": {},
        }, **values)

    def ingest(self, *events):
        results = self.Ingest._ingest(list(events), self.source, now=T0 + timedelta(days=1))
        self.env.invalidate_all()
        return [self.env["drip.event"].browse(result.get("id")) for result in results]

    def identity(self, kind, value):
        return self.env["drip.identity"].search([("kind", "=", kind), ("value", "=", value)])

    def test_anonymous_events_attach_when_the_visitor_identifies(self):
        first, second = self.ingest(
            self.event(ids={"anonymous_id": "st-device-1"}),
            self.event(call_type="page", ids={"anonymous_id": "st-device-1"}),
        )
        self.assertFalse(first.partner_id | second.partner_id, "anonymous: no customer yet")
        partners_before = self.env["res.partner"].search_count([])
        (identify,) = self.ingest(self.event(
            call_type="identify",
            ids={"user_id": "st-u-100", "anonymous_id": "st-device-1",
                 "email": "mei@stitch.example"},
            traits={"name": "Mei Chen", "birthday": "1992-02-29", "language": "en-US"},
        ))
        mei = identify.partner_id
        self.assertTrue(mei)
        self.assertEqual(self.env["res.partner"].search_count([]), partners_before + 1)
        self.assertRecordValues(mei, [{"name": "Mei Chen", "email": "mei@stitch.example",
                                       "drip_birthday": date(1992, 2, 29), "lang": "en_US"}])
        self.assertEqual((first | second).partner_id, mei, "earlier events were stitched")
        for kind, value in (("user_id", "st-u-100"), ("anonymous_id", "st-device-1"),
                            ("email", "mei@stitch.example")):
            self.assertEqual(self.identity(kind, value).partner_id, mei, kind)
        (later,) = self.ingest(self.event(ids={"anonymous_id": "st-device-1"}))
        self.assertEqual(later.partner_id, mei, "the device now resolves to her")

    def test_alias_attaches_the_previous_id(self):
        (known,) = self.ingest(self.event(call_type="identify", ids={"user_id": "st-u-7"}))
        (visit,) = self.ingest(self.event(call_type="page", ids={"anonymous_id": "st-tab-9"}))
        self.assertFalse(visit.partner_id)
        self.ingest(self.event(call_type="alias", ids={"user_id": "st-u-7"},
                               previous_id="st-tab-9"))
        self.assertEqual(visit.partner_id, known.partner_id)
        self.assertEqual(self.identity("anonymous_id", "st-tab-9").partner_id, known.partner_id)

    def test_customers_typed_in_the_backend_are_found(self):
        ann = self.env["res.partner"].create({"name": "Ann", "email": "Ann <ANN@stitch.example>"})
        self.company.partner_id.country_id = self.env.ref("base.cn")
        li = self.env["res.partner"].create({"name": "Li", "mobile": "+86 138 0013 8000"})
        partners_before = self.env["res.partner"].search_count([])
        by_email, by_phone = self.ingest(
            self.event(ids={"email": "ann@stitch.example"}),
            self.event(ids={"phone": "+8613800138000"}),
        )
        self.assertEqual(by_email.partner_id, ann)
        self.assertEqual(by_phone.partner_id, li)
        self.assertEqual(self.env["res.partner"].search_count([]), partners_before)
        self.assertEqual(self.identity("email", "ann@stitch.example").partner_id, ann,
                         "the identity is recorded, so the next lookup is the indexed one")

    def test_conflicting_identity_is_recorded_never_merged(self):
        ann = self.env["res.partner"].create({"name": "Ann", "email": "ann@stitch.example"})
        self.ingest(self.event(ids={"email": "ann@stitch.example"}))
        (bob_event,) = self.ingest(self.event(call_type="identify", ids={"user_id": "bob"},
                                              traits={"name": "Bob"}))
        bob = bob_event.partner_id
        # Bob's app now claims Ann's email.
        (claim,) = self.ingest(self.event(call_type="identify",
                                          ids={"user_id": "bob", "email": "ann@stitch.example"}))
        self.assertEqual(claim.partner_id, bob, "the user id decides whose event it is")
        conflict = self.env["drip.identity.conflict"].search([("value", "=", "ann@stitch.example")])
        self.assertRecordValues(conflict, [{"kind": "email", "partner_id": ann.id,
                                            "other_partner_id": bob.id, "state": "open",
                                            "event_id": claim.id}])
        self.assertTrue(ann.exists() and bob.exists())
        self.assertFalse(bob.email, "Ann's email is not copied onto Bob")
        self.assertEqual(self.identity("email", "ann@stitch.example").partner_id, ann)
        self.ingest(self.event(call_type="identify",
                               ids={"user_id": "bob", "email": "ann@stitch.example"}))
        self.assertEqual(
            self.env["drip.identity.conflict"].search_count([("value", "=", "ann@stitch.example")]),
            1, "one open conflict per pair, however many events repeat it")
        action = conflict.action_merge()
        self.assertEqual(action["res_model"], "base.partner.merge.automatic.wizard")

    def test_trait_rules(self):
        (created,) = self.ingest(self.event(
            call_type="identify", ids={"user_id": "st-u-55", "email": "kai@stitch.example"},
            traits={"name": "Kai"},
        ))
        kai = created.partner_id
        self.assertEqual(set(kai.drip_traits_source) - {"_created_by"}, {"name", "email"})
        # A later identify updates what events set, and fills what is empty.
        self.ingest(self.event(call_type="identify", ids={"user_id": "st-u-55"},
                               traits={"name": "Kai Lee", "birthday": "1988-07-01"}))
        self.assertEqual(kai.name, "Kai Lee")
        self.assertEqual(kai.drip_birthday, date(1988, 7, 1))
        # An older identify (sent late) does not overwrite a newer value.
        self.ingest(self.event(call_type="identify", ids={"user_id": "st-u-55"},
                               occurred=T0 - timedelta(days=3), traits={"name": "K."}))
        self.assertEqual(kai.name, "Kai Lee")
        # A user corrects the name in the backend: from now on it is theirs.
        kai.write({"name": "Kai Lee-Wong"})
        self.assertNotIn("name", kai.drip_traits_source)
        self.ingest(self.event(call_type="identify", ids={"user_id": "st-u-55"},
                               traits={"name": "Kai L"}))
        self.assertEqual(kai.name, "Kai Lee-Wong")
        # A value typed before the module ever saw the person is never overwritten.
        typed = self.env["res.partner"].create({"name": "Typed", "email": "typed@stitch.example",
                                                "lang": "en_US"})
        self.ingest(self.event(call_type="identify",
                               ids={"user_id": "st-u-56", "email": "typed@stitch.example"},
                               traits={"name": "From app", "language": "fr"}))
        self.assertRecordValues(typed, [{"name": "Typed", "lang": "en_US"}])
        self.assertEqual(self.identity("user_id", "st-u-56").partner_id, typed)

    def test_consent_traits(self):
        (event,) = self.ingest(self.event(call_type="identify", ids={"user_id": "st-u-9",
                                                                     "email": "c@stitch.example"},
                                          traits={"email_consent": True}))
        customer = event.partner_id
        self.assertEqual(customer.drip_consent_email, "opted_in")
        ledger = self.env["drip.consent.event"].search([("partner_id", "=", customer.id)])
        self.assertEqual(ledger.mapped("source"), ["api"])
        self.ingest(self.event(call_type="identify", ids={"user_id": "st-u-9"},
                               traits={"email_consent": False}))
        self.assertEqual(customer.drip_consent_email, "opted_out", "an opt-out always applies")
        self.ingest(self.event(call_type="identify", ids={"user_id": "st-u-9"},
                               traits={"email_consent": True}))
        self.assertEqual(customer.drip_consent_email, "opted_out",
                         "an API opt-in never lifts an opt-out")

    def test_policy_never_keeps_events_unattached(self):
        self.source.unknown_partner_policy = "never"
        partners_before = self.env["res.partner"].search_count([])
        (event,) = self.ingest(self.event(ids={"user_id": "st-u-unknown",
                                               "email": "nobody@stitch.example"}))
        self.assertFalse(event.partner_id)
        self.assertEqual(event.external_user_id, "st-u-unknown")
        self.assertEqual(self.env["res.partner"].search_count([]), partners_before)
        # Once the person exists (typed in the backend, identified elsewhere), a later
        # event with the user id attaches the earlier ones too.
        someone = self.env["res.partner"].create({"name": "Some One",
                                                  "email": "someone@stitch.example"})
        self.ingest(self.event(ids={"user_id": "st-u-unknown", "email": "someone@stitch.example"}))
        self.assertEqual(event.partner_id, someone)

    def test_replayed_key_changes_nothing(self):
        first = self.event(call_type="identify", ids={"user_id": "st-u-r"}, traits={"name": "R"})
        self.ingest(first)
        replay = dict(first, traits={"name": "Changed"})
        results = self.Ingest._ingest([replay], self.source)
        self.assertTrue(results[0]["duplicate"])
        self.assertEqual(self.identity("user_id", "st-u-r").partner_id.name, "R")
        self.assertEqual(self.env["drip.event"].search_count(
            [("idempotency_key", "=", first["idempotency_key"])]), 1)

    def test_query_count_does_not_grow_with_the_batch(self):
        partners = self.env["res.partner"].create([
            {"name": f"P{i}", "email": f"p{i}@stitch.example"} for i in range(100)
        ])
        self.ingest(*[self.event(ids={"email": p.email}) for p in partners])  # identities
        self.env.flush_all()

        def queries(size):
            type(self).counter += 1
            events = [self.event(ids={"email": p.email,
                                      "anonymous_id": f"d{p.id}-{self.counter}"})
                      for p in partners[:size]]
            before = self.env.cr.sql_log_count
            self.Ingest._ingest(events, self.source)
            return self.env.cr.sql_log_count - before

        queries(5)  # warm-up: the first statement of a transaction may flush the ORM
        small, large = queries(5), queries(100)
        self.assertEqual(small, large, "set-based: the same statements for 5 or 100 events")
        self.assertLessEqual(large, 12)
