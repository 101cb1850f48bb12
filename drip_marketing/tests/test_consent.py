import re
import time

from odoo.exceptions import AccessError
from odoo.tests import HttpCase, TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger

from ..engine import tokens
from ..models.drip_consent_event import ERASURE_CONTEXT_KEY


def ledger(partner, channel=None):
    domain = [("partner_id", "=", partner.id)] + ([("channel", "=", channel)] if channel else [])
    return partner.env["drip.consent.event"].search(domain, order="id")


def blacklist_entry(env, email):
    return env["mail.blacklist"].with_context(active_test=False).search([("email", "=", email)])


@tagged("post_install", "-at_install")
class TestConsent(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.company = cls.env.company
        cls.company.drip_double_opt_in = False
        belgium = cls.env.ref("base.be")
        cls.ann = cls.env["res.partner"].create({
            "name": "Ann", "email": "Ann <ann@example.com>", "mobile": "+32 470 12 34 56",
            "country_id": belgium.id,
        })
        cls.bob = cls.env["res.partner"].create({"name": "Bob", "email": "bob@example.com"})

    def test_transitions_write_state_and_ledger(self):
        changed = self.ann._drip_set_consent("email", "opted_in", "backend", proof="phone call")
        self.assertEqual(changed, self.ann)
        self.assertEqual(self.ann.drip_consent_email, "opted_in")
        self.assertTrue(self.ann.drip_consent_email_date)
        row = ledger(self.ann)
        self.assertRecordValues(row, [{
            "channel": "email", "old_state": "unknown", "new_state": "opted_in",
            "source": "backend", "user_id": self.env.uid, "is_public_request": False,
            "proof": "phone call",
        }])
        # Setting the same state again is no change and leaves no row.
        self.assertFalse(self.ann._drip_set_consent("email", "opted_in", "backend"))
        self.assertEqual(len(ledger(self.ann)), 1)

        self.ann._drip_set_consent("email", "opted_out", "backend")
        entry = blacklist_entry(self.env, "ann@example.com")
        self.assertTrue(entry.active and entry.drip_opt_out, "opt-out feeds Odoo's blacklist")
        self.assertTrue(self.ann.is_blacklisted)
        self.ann._drip_set_consent("email", "opted_in", "backend")
        self.assertFalse(entry.active, "opting in again lifts our own entry")
        self.assertEqual(ledger(self.ann).mapped("new_state"),
                         ["opted_in", "opted_out", "opted_in"])

    def test_batch_change_is_one_ledger_insert(self):
        partners = self.env["res.partner"].create(
            [{"name": f"P{n}", "email": f"p{n}@example.com"} for n in range(20)]
        )
        with self.assertQueryCount(__system__=5):
            partners._drip_set_consent("sms", "opted_in", "import")
        self.assertEqual(set(partners.mapped("drip_consent_sms")), {"opted_in"})
        self.assertEqual(self.env["drip.consent.event"].search_count(
            [("partner_id", "in", partners.ids)]), 20)

    def test_field_writes_and_creation_go_through_the_ledger(self):
        self.bob.write({"drip_consent_sms": "opted_out"})
        self.assertRecordValues(ledger(self.bob), [
            {"channel": "sms", "old_state": "unknown", "new_state": "opted_out",
             "source": "backend"},
        ])
        carl = self.env["res.partner"].with_context(import_file=True).create(
            {"name": "Carl", "email": "carl@example.com", "drip_consent_email": "opted_in"}
        )
        self.assertEqual(carl.drip_consent_email, "opted_in")
        self.assertRecordValues(ledger(carl), [
            {"channel": "email", "old_state": "unknown", "new_state": "opted_in",
             "source": "import"},
        ])

    def test_blacklist_made_elsewhere_shows_as_opted_out_and_back(self):
        twin = self.env["res.partner"].create({"name": "Ann at work", "email": "ANN@example.com"})
        self.env["mail.blacklist"]._add("ann@example.com", message="asked by phone")
        for partner in (self.ann, twin):
            self.assertEqual(partner.drip_consent_email, "opted_out")
            self.assertRecordValues(ledger(partner), [
                {"old_state": "unknown", "new_state": "opted_out", "source": "blacklist"},
            ])
        entry = blacklist_entry(self.env, "ann@example.com")
        self.assertFalse(entry.drip_opt_out, "not ours")

        # An opt-in by a user does not lift an entry made elsewhere...
        self.assertFalse(self.ann._drip_set_consent("email", "opted_in", "backend"))
        self.assertEqual(self.ann.drip_consent_email, "opted_out")
        self.assertTrue(entry.active)
        # ... un-blacklisting in Odoo brings the customers back to unknown.
        self.env["mail.blacklist"]._remove("ann@example.com")
        self.assertEqual(self.ann.drip_consent_email, "unknown")
        self.assertEqual(twin.drip_consent_email, "unknown")
        self.assertEqual(ledger(twin)[-1].source, "blacklist")

        # The customers themselves may lift any entry (as Odoo's own mailing page does).
        self.env["mail.blacklist"]._add("ann@example.com")
        self.ann._drip_set_consent("email", "opted_in", "preferences", is_public_request=True,
                                   ip_address="198.51.100.7", user_agent="Mail/1.0")
        self.assertEqual(self.ann.drip_consent_email, "opted_in")
        self.assertFalse(entry.active)
        self.assertRecordValues(ledger(self.ann, "email")[-1], [{
            "source": "preferences", "is_public_request": True, "user_id": False,
            "ip_address": "198.51.100.7", "user_agent": "Mail/1.0",
        }])

    def test_our_opt_out_marks_everyone_with_the_address(self):
        twin = self.env["res.partner"].create({"name": "Ann again", "email": "ann@example.com"})
        self.ann._drip_set_consent("email", "opted_out", "unsubscribe")
        self.assertEqual(twin.drip_consent_email, "opted_out")
        self.assertEqual(ledger(twin).source, "blacklist")
        # A customer whose new address is already blacklisted shows as opted out.
        self.bob.email = "ann@example.com"
        self.assertEqual(self.bob.drip_consent_email, "opted_out")

    def test_phone_blacklist_both_ways(self):
        self.assertEqual(self.ann.drip_phone_sanitized, "+32470123456")
        self.ann._drip_set_consent("sms", "opted_out", "backend")
        entry = self.env["phone.blacklist"].with_context(active_test=False).search(
            [("number", "=", "+32470123456")]
        )
        self.assertTrue(entry.active and entry.drip_opt_out)
        self.ann._drip_set_consent("sms", "opted_in", "backend")
        self.assertFalse(entry.active)

        self.env["phone.blacklist"]._add(["+32470123456"])
        self.assertEqual(self.ann.drip_consent_sms, "opted_out")
        self.assertEqual(ledger(self.ann, "sms")[-1].source, "blacklist")
        self.env["phone.blacklist"]._remove(["+32470123456"])
        self.assertEqual(self.ann.drip_consent_sms, "unknown")

    def test_double_opt_in(self):
        self.company.drip_double_opt_in = True
        self.bob._drip_set_consent("email", "opted_in", "api")
        self.assertEqual(self.bob.drip_consent_email, "pending")
        mail = self.env["mail.mail"].search([("email_to", "ilike", "bob@example.com")])
        self.assertEqual(len(mail), 1, "a confirmation email is queued")
        self.assertIn("/drip/confirm/", mail.body_html)
        token = re.search(r"/drip/confirm/([\w.-]+)", mail.body_html).group(1)
        partner, payload = self.env["res.partner"]._drip_from_token(token, "confirm")
        self.assertEqual(partner, self.bob)
        allowed, reasons = (self.bob | self.ann)._drip_consent_filter("email")
        self.assertFalse(allowed, "pending and unknown wait for a confirmation")
        self.assertEqual(reasons, {self.bob.id: "no_consent", self.ann.id: "no_consent"})

        self.bob._drip_set_consent("email", "opted_in", "double_opt_in", is_public_request=True)
        self.assertEqual(self.bob.drip_consent_email, "opted_in")
        self.assertEqual(ledger(self.bob).mapped("new_state"), ["pending", "opted_in"])
        self.assertEqual(self.bob._drip_consent_filter("email")[0], self.bob)
        # A confirmation never turns an opted-out customer back in.
        self.ann._drip_set_consent("email", "opted_out", "backend")
        self.assertFalse(self.ann._drip_set_consent("email", "opted_in", "double_opt_in"))

    def test_consent_filter_reasons(self):
        nobody = self.env["res.partner"].create({"name": "No address"})
        pending = self.env["res.partner"].create({"name": "Pending", "email": "p@example.com"})
        pending._drip_set_consent("email", "pending", "backend")
        listed = self.env["res.partner"].create({"name": "Listed", "email": "l@example.com"})
        self.env["mail.blacklist"].with_context(drip_blacklist_sync=True).create(
            {"email": "l@example.com"}
        )
        self.bob._drip_set_consent("email", "opted_out", "backend")
        everyone = self.ann | self.bob | nobody | pending | listed
        allowed, reasons = everyone._drip_consent_filter("email")
        self.assertEqual(allowed, self.ann, "unknown may receive marketing without double opt-in")
        self.assertEqual(reasons, {
            self.bob.id: "no_consent", nobody.id: "no_address", pending.id: "no_consent",
            listed.id: "blacklisted",
        })
        allowed, reasons = everyone._drip_consent_filter("sms")
        self.assertEqual(allowed, self.ann)
        self.assertEqual(set(reasons.values()), {"no_address"})
        self.assertEqual(everyone._drip_consent_filter("note"), (everyone, {}))
        self.ann._drip_set_consent("messaging", "opted_out", "backend")
        self.assertEqual(everyone._drip_consent_filter("webhook")[1], {self.ann.id: "no_consent"})

    def test_ledger_is_append_only(self):
        self.ann._drip_set_consent("email", "opted_in", "backend")
        row = ledger(self.ann)
        manager = new_test_user(self.env, login="ledger_manager",
                                groups="base.group_user,drip_marketing.drip_marketing_group_manager")
        for env in (self.env, self.env(su=True), row.with_user(manager).env):
            with self.assertRaises(AccessError):
                row.with_env(env).write({"new_state": "opted_out"})
            with self.assertRaises(AccessError):
                row.with_env(env).unlink()
        # Even with the erasure key, a user without write access cannot touch it.
        with self.assertRaises(AccessError):
            row.with_user(manager).with_context(**{ERASURE_CONTEXT_KEY: True}).write(
                {"proof": "x"}
            )
        self.assertEqual(row.new_state, "opted_in")

    def test_tokens(self):
        Partner = self.env["res.partner"]
        token = self.ann._drip_token("unsubscribe", c="email")
        self.assertEqual(Partner._drip_from_token(token, "unsubscribe")[0], self.ann)
        payload, signature = token.split(".")
        forged = tokens.sign("not the database secret", {"p": self.bob.id, "c": "email"},
                             expires_at=int(time.time()) + 60, purpose="unsubscribe")
        expired = tokens.sign(Partner._drip_token_secret(), {"p": self.ann.id},
                              expires_at=int(time.time()) - 1, purpose="unsubscribe")
        swapped = tokens.sign(Partner._drip_token_secret(), {"p": self.bob.id},
                              expires_at=int(time.time()) + 60, purpose="unsubscribe")
        self.assertEqual(Partner._drip_from_token(swapped, "unsubscribe")[0], self.bob)
        for bad in (payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + signature,
                    forged, expired, token + "x", "", swapped.split(".")[0] + "." + signature):
            with self.subTest(token=bad), self.assertRaises(tokens.InvalidToken):
                Partner._drip_from_token(bad, "unsubscribe")
        with self.assertRaises(tokens.InvalidToken):
            Partner._drip_from_token(token, "preferences")
        gone = Partner.create({"name": "Gone"})
        gone_token = gone._drip_token("preferences")
        gone.unlink()
        with self.assertRaises(tokens.InvalidToken):
            Partner._drip_from_token(gone_token, "preferences")
        self.assertTrue(self.ann._drip_unsubscribe_url().startswith(self.ann.get_base_url()))


@tagged("post_install", "-at_install")
class TestConsentRoutes(HttpCase):
    def setUp(self):
        super().setUp()
        self.env.company.drip_double_opt_in = False
        self.partner = self.env["res.partner"].create(
            {"name": "Dana", "email": "dana@example.com", "lang": "en_US"}
        )
        template = self.env["drip.template"].create(
            {"name": "News", "channel": "email", "subject": "Hi", "body_html": "<p>Hi</p>"}
        )
        journey = self.env["drip.journey"].create({"name": "Welcome", "trigger": "partner_created"})
        step = self.env["drip.step"].create({
            "journey_id": journey.id, "name": "Hello", "step_type": "send", "channel": "email",
            "template_id": template.id,
        })
        self.enrollment = self.env["drip.enrollment"].create(
            {"journey_id": journey.id, "partner_id": self.partner.id}
        )
        self.message = self.env["drip.message"].create({
            "enrollment_id": self.enrollment.id, "step_id": step.id, "channel": "email",
            "scheduled_at": "2026-01-01 10:00:00", "state": "sent",
        })

    def path(self, url):
        return url[len(self.partner.get_base_url()):]

    def test_one_click_unsubscribe(self):
        path = self.path(self.partner._drip_unsubscribe_url(self.message))
        page = self.url_open(path)
        self.assertEqual(page.status_code, 200)
        self.assertIn('name="confirm"', page.text)
        self.assertIn("d***@example.com", page.text)
        self.assertNotIn("dana@example.com", page.text)
        self.partner.invalidate_recordset()
        self.assertEqual(self.partner.drip_consent_email, "unknown", "a GET changes nothing")

        # RFC 8058: the mail client posts List-Unsubscribe=One-Click, no session, no CSRF.
        response = self.url_open(path, data={"List-Unsubscribe": "One-Click"})
        self.assertEqual(response.status_code, 200)
        self.env.invalidate_all()
        self.assertEqual(self.partner.drip_consent_email, "opted_out")
        self.assertRecordValues(ledger(self.partner), [{
            "new_state": "opted_out", "source": "one_click", "is_public_request": True,
            "user_id": False, "proof": f"message #{self.message.id}",
        }])
        self.assertTrue(ledger(self.partner).ip_address)
        self.assertTrue(self.message.unsubscribed_at)
        self.assertEqual(self.enrollment.exit_reason, "unsubscribed")
        self.assertTrue(blacklist_entry(self.env, "dana@example.com").active)
        # Posting again is harmless.
        self.assertEqual(self.url_open(path, data={"List-Unsubscribe": "One-Click"}).status_code,
                         200)
        self.assertEqual(len(ledger(self.partner)), 1)

    @mute_logger("odoo.addons.drip_marketing.controllers.consent")
    def test_bad_tokens_change_nothing(self):
        token = self.partner._drip_token("unsubscribe", c="email")
        payload, signature = token.split(".")
        other = self.env["res.partner"].create({"name": "Eve", "email": "eve@example.com"})
        preferences_token = self.partner._drip_token("preferences")
        bad_tokens = [
            payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature,
            other._drip_token("unsubscribe", c="email").split(".")[0] + "." + signature,
            preferences_token,  # right customer, wrong purpose
            tokens.sign(self.env["res.partner"]._drip_token_secret(), {"p": self.partner.id},
                        expires_at=int(time.time()) - 10, purpose="unsubscribe"),
            "garbage",
        ]
        for bad in bad_tokens:
            with self.subTest(token=bad):
                response = self.url_open(f"/drip/unsubscribe/{bad}",
                                         data={"List-Unsubscribe": "One-Click"})
                self.assertEqual(response.status_code, 403)
                self.assertNotIn("dana", response.text.lower())
                self.assertNotIn("eve", response.text.lower())
                self.assertEqual(self.url_open(f"/drip/unsubscribe/{bad}").status_code, 403)
                if not bad.startswith(preferences_token):
                    self.assertEqual(self.url_open(f"/drip/preferences/{bad}").status_code, 403)
                self.assertEqual(self.url_open(f"/drip/confirm/{bad}").status_code, 403)
        # A valid token without the one-click body or the page's button changes nothing.
        self.assertEqual(self.url_open(f"/drip/unsubscribe/{token}", data={"x": "1"}).status_code,
                         400)
        self.env.invalidate_all()
        self.assertEqual((self.partner | other).mapped("drip_consent_email"),
                         ["unknown", "unknown"])
        self.assertFalse(self.env["drip.consent.event"].search(
            [("partner_id", "in", (self.partner | other).ids)]))

    def test_unsubscribe_page_button(self):
        path = self.path(self.partner._drip_unsubscribe_url())
        response = self.url_open(path, data={"confirm": "1"})
        self.assertEqual(response.status_code, 200)
        self.assertIn("unsubscribed", response.text)
        self.env.invalidate_all()
        self.assertEqual(self.partner.drip_consent_email, "opted_out")
        self.assertEqual(ledger(self.partner).source, "unsubscribe")

    def test_preferences_page(self):
        self.partner.mobile = "+32 470 12 34 56"
        self.partner.country_id = self.env.ref("base.be")
        path = self.path(self.partner._drip_preferences_url())
        page = self.url_open(path)
        self.assertEqual(page.status_code, 200)
        self.assertIn('name="consent_email"', page.text)
        self.assertIn('name="consent_sms"', page.text)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        response = self.url_open(path, data={
            "csrf_token": csrf, "consent_email": "in", "consent_sms": "out",
        })
        self.assertEqual(response.status_code, 200)
        self.assertIn("saved", response.text)
        self.env.invalidate_all()
        self.assertEqual(self.partner.drip_consent_email, "opted_in")
        self.assertEqual(self.partner.drip_consent_sms, "opted_out")
        self.assertEqual(set(ledger(self.partner).mapped("source")), {"preferences"})

    def test_double_opt_in_confirmation(self):
        self.env.company.drip_double_opt_in = True
        self.partner._drip_set_consent("email", "opted_in", "preferences")
        self.assertEqual(self.partner.drip_consent_email, "pending")
        path = self.path(self.partner._drip_confirm_url())
        page = self.url_open(path)
        self.assertEqual(page.status_code, 200)
        self.assertIn("Confirm my subscription", page.text)
        self.env.invalidate_all()
        self.assertEqual(self.partner.drip_consent_email, "pending",
                         "opening the link (mail scanners do) does not confirm")
        response = self.url_open(path, data={"confirm": "1"})
        self.assertEqual(response.status_code, 200)
        self.env.invalidate_all()
        self.assertEqual(self.partner.drip_consent_email, "opted_in")
        self.assertRecordValues(ledger(self.partner)[-1], [
            {"old_state": "pending", "new_state": "opted_in", "source": "double_opt_in",
             "is_public_request": True},
        ])
