import base64
import csv
import hashlib
import io

from odoo.exceptions import UserError
from odoo.tests import tagged

from ..wizards.drip_audience_export import audience_email, audience_phone
from .common import DripCase


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


@tagged("post_install", "-at_install")
class TestAudienceExport(DripCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company.drip_double_opt_in = False
        cls.tag = cls.env["res.partner.category"].create({"name": "Audience test"})
        china = cls.env.ref("base.cn")

        def customer(name, **values):
            return cls.env["res.partner"].create(
                dict({"name": name, "category_id": [(4, cls.tag.id)]}, **values))

        cls.alice = customer("Alice", email="  Alice.Smith@Example.COM ",
                             mobile="+86 138 1234 5678")
        cls.bo = customer("Bo", email="bo@example.com", mobile="138-1234-5679",
                          country_id=china.id)
        cls.cai = customer("Cai", mobile="0086 138 1234 5670", country_id=china.id)
        cls.email_out = customer("Email opted out", email="out@example.com",
                                 mobile="+8613812345671")
        cls.email_out._drip_set_consent("email", "opted_out")
        cls.all_out = customer("All out", email="gone@example.com", mobile="+8613812345672")
        cls.all_out._drip_set_consent("email", "opted_out")
        cls.all_out._drip_set_consent("sms", "opted_out")
        cls.listed = customer("Blacklisted", email="listed@example.com")
        cls.env["mail.blacklist"]._add("listed@example.com")
        cls.phone_listed = customer("Phone blacklisted", mobile="+8613812345673")
        cls.env["phone.blacklist"]._add(["+8613812345673"])
        cls.opted_in = customer("Opted in", email="yes@example.com", mobile="+8613812345674")
        cls.opted_in._drip_set_consent("email", "opted_in")
        cls.opted_in._drip_set_consent("sms", "opted_in")
        cls.outsider = cls.env["res.partner"].create(
            {"name": "Not in the segment", "email": "outsider@example.com"})
        cls.segment = cls.env["drip.segment"].create({
            "name": "Audience", "domain": f"[('category_id', 'in', [{cls.tag.id}])]",
        })

    def export(self, **values):
        wizard = self.env["drip.audience.export"].with_user(self.manager).create(
            dict({"segment_id": self.segment.id}, **values))
        action = wizard.action_export()
        attachment = wizard.attachment_id
        self.assertEqual(action["url"], f"/web/content/{attachment.id}?download=true")
        self.assertEqual((attachment.res_model, attachment.res_id),
                         ("drip.segment", self.segment.id))
        rows = list(csv.reader(io.StringIO(base64.b64decode(attachment.datas).decode())))
        self.assertEqual(rows[0], ["email_sha256", "phone_sha256"])
        return wizard, rows[1:]

    def test_normalisation_and_hashing(self):
        # Case and spaces do not matter; "+86 138…", "0086 138…" and a national number
        # of a Chinese customer all become the same E.164 number.
        self.assertEqual(audience_email("  Alice.Smith@Example.COM "),
                         sha("alice.smith@example.com"))
        self.assertEqual(audience_email("alice.smith@example.com"),
                         audience_email("ALICE.SMITH@EXAMPLE.COM"))
        self.assertIsNone(audience_email("not an email"))
        e164 = sha("+8613812345678")
        self.assertEqual(audience_phone("+86 138 1234 5678"), e164)
        self.assertEqual(audience_phone("0086 138-1234-5678", default_region="CN"), e164)
        self.assertEqual(audience_phone("138 1234 5678", default_region="CN"), e164)
        self.assertEqual(audience_phone("+86 138 1234 5678", platform="meta"),
                         sha("8613812345678"), "Meta: digits with country code, no '+'")
        self.assertIsNone(audience_phone("12345"))

    def test_export_respects_consent(self):
        wizard, rows = self.export()
        self.assertIn((sha("alice.smith@example.com"), sha("+8613812345678")),
                      [tuple(row) for row in rows])
        self.assertIn([sha("bo@example.com"), sha("+8613812345679")], rows)
        self.assertIn(["", sha("+8613812345670")], rows, "0086 number, no email")
        self.assertIn(["", sha("+8613812345671")], rows, "email opted out: phone only")
        self.assertIn([sha("yes@example.com"), sha("+8613812345674")], rows)
        flat = {value for row in rows for value in row}
        for hidden in ("out@example.com", "gone@example.com", "listed@example.com",
                       "outsider@example.com"):
            self.assertNotIn(sha(hidden), flat)
        for hidden in ("+8613812345672", "+8613812345673"):
            self.assertNotIn(sha(hidden), flat)
        self.assertEqual(len(rows), 5)
        self.assertEqual((wizard.exported_count, wizard.excluded_count), (5, 3))
        self.assertFalse(any("@" in value or value.startswith("+") for value in flat),
                         "nothing in clear")

    def test_double_opt_in_and_explicit_opt_in(self):
        self.company.drip_double_opt_in = True
        _wizard, rows = self.export()
        flat = {value for row in rows for value in row}
        self.assertNotIn(sha("bo@example.com"), flat, "unknown email consent, double opt-in")
        self.assertIn(sha("yes@example.com"), flat)
        self.company.drip_double_opt_in = False
        _wizard, rows = self.export(require_opt_in=True)
        self.assertEqual(rows, [[sha("yes@example.com"), sha("+8613812345674")]])

    def test_choices(self):
        _wizard, rows = self.export(include_phone=False, platform="meta")
        self.assertTrue(all(phone == "" for _email, phone in rows))
        _wizard, rows = self.export(include_email=False, platform="meta")
        self.assertIn(["", sha("8613812345678")], rows)
        with self.assertRaises(UserError):
            self.export(include_email=False, include_phone=False)

    def test_reps_cannot_export(self):
        from odoo.exceptions import AccessError

        with self.assertRaises(AccessError):
            self.env["drip.audience.export"].with_user(self.rep).create(
                {"segment_id": self.segment.id})
