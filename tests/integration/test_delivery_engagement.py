"""Engagement over real HTTP and real mail: opens, clicks, replies, bounces, webhooks."""

import json
import threading
import time
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import requests
from services import free_port, wait_until

from engine import tokens


def _sent_email(delivery):
    delivery.cart_journey()
    partner_ids, _orders = delivery.carts(1)
    ids = delivery.enroll_due()
    delivery.process_due()
    delivery.work()
    assert delivery.states(ids) == ["sent"]
    return ids[0], partner_ids[0], delivery.sink.messages[-1]


def _links(message, marker):
    html = message.get_body(("html",)).get_content()
    start = 0
    found = []
    while (index := html.find(marker, start)) >= 0:
        end = html.index('"', index)
        found.append(html[index:end].replace("&amp;", "&"))
        start = end
    return found


def _engagement(delivery, message_id):
    with delivery.db.env() as env:
        env.cr.execute(
            "SELECT opened_at, clicked_at, replied_at, bounced_at FROM drip_message "
            "WHERE id = %s", [message_id])
        return dict(zip(("opened", "clicked", "replied", "bounced"), env.cr.fetchone(),
                        strict=True))


def test_open_pixel_and_click_redirect(delivery, odoo_http):
    message_id, _partner, email = _sent_email(delivery)
    [pixel] = [url for url in _links(email, "http") if "/drip/o/" in url]
    [click] = [url for url in _links(email, "http") if "/drip/c/" in url]

    response = requests.get(pixel, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/gif"
    first = _engagement(delivery, message_id)
    assert first["opened"] and not first["clicked"]
    requests.get(pixel, timeout=30)  # idempotent
    assert _engagement(delivery, message_id)["opened"] == first["opened"]

    response = requests.get(click, timeout=30, allow_redirects=False)
    assert response.status_code in (302, 303)
    target = urlparse(response.headers["Location"])
    assert target.netloc == "shop.example.com" and target.path == "/cart"
    query = parse_qs(target.query)
    assert query["x"] == ["1"] and query["y"] == ["2"]
    assert query.get("utm_medium") == ["Email"]
    clicked = _engagement(delivery, message_id)["clicked"]
    assert clicked
    requests.get(click, timeout=30, allow_redirects=False)
    assert _engagement(delivery, message_id)["clicked"] == clicked
    with delivery.db.env() as env:
        link = env["link.tracker"].search([("url", "=", "https://shop.example.com/cart?x=1&y=2")])
        assert link.count == 2  # Odoo's own click statistics

    # A forged or altered token changes nothing and redirects nowhere.
    forged = click[:-3] + ("AAA" if not click.endswith("AAA") else "BBB")
    assert requests.get(forged, timeout=30, allow_redirects=False).status_code == 404
    assert requests.get(pixel.replace("/drip/o/", "/drip/o/x"), timeout=30).status_code == 200


def test_reply_and_bounce_through_odoo_mail_gateway(delivery):
    """A reply (In-Reply-To our Message-ID) and a DSN bounce, fed to Odoo's gateway."""
    message_id, partner_id, email = _sent_email(delivery)
    reply = EmailMessage()
    reply["From"] = email["To"]
    reply["To"] = "shop@example.com"
    reply["Subject"] = "Re: " + email["Subject"]
    reply["Message-ID"] = "<reply-1@customer.example.com>"
    reply["In-Reply-To"] = email["Message-ID"]
    reply["References"] = email["Message-ID"]
    reply.set_content("Is the tea pot still available?")
    with delivery.db.env() as env:
        env["mail.thread"].message_process(None, reply.as_bytes())
    replied = _engagement(delivery, message_id)
    assert replied["replied"]
    with delivery.db.env() as env:
        posted = env["mail.message"].search([("message_id", "=", "<reply-1@customer.example.com>")])
        assert posted.model == "res.partner" and posted.res_id == partner_id

    recipient = email["To"].addresses[0].addr_spec
    bounce = (
        "From: MAILER-DAEMON@mx.example.com\r\n"
        "To: shop@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce-1@mx.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nThe address does not exist.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {email['Message-ID']}\r\nSubject: reminder\r\n\r\n--B--\r\n"
    )
    with delivery.db.env() as env:
        env["mail.thread"].message_process(None, bounce.encode())
    assert _engagement(delivery, message_id)["bounced"]


class _Hook(BaseHTTPRequestHandler):
    statuses = []
    received = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_webhook_step_signed_and_retried_on_5xx(delivery):
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Hook)
    _Hook.statuses, _Hook.received = [503], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        journey_id = delivery.cart_journey()
        with delivery.db.env() as env:
            journey = env["drip.journey"].browse(journey_id)
            env["drip.step"].create({
                "journey_id": journey.id, "parent_id": journey.step_ids[:1].id,
                "name": "Tell the gateway", "step_type": "webhook",
                "webhook_url": f"http://127.0.0.1:{port}/hook",
                "webhook_secret": "s3cret",
            })
        delivery.configure(retry_intervals="1")
        delivery.carts(1)
        delivery.enroll_due()
        delivery.process_due()
        delivery.work()  # the email; the webhook step becomes due
        delivery.process_due()
        with delivery.db.env() as env:
            hook = env["drip.message"].search([("journey_id", "=", journey_id),
                                               ("step_type", "=", "webhook")])
            hook_id = hook.id
        delivery.work()  # 503 → retry
        assert delivery.states([hook_id]) == ["queued"]

        def retried():
            time.sleep(0.5)
            delivery.work()
            return delivery.states([hook_id]) == ["sent"]

        wait_until(retried, 30, what="the webhook retry")
        assert len(_Hook.received) == 2
        headers, body = _Hook.received[-1]
        tokens.verify_webhook_signature("s3cret", headers["X-Drip-Signature"], body,
                                        time.time())
        payload = json.loads(body)
        assert payload["event"] == "drip.step"
        assert payload["message"]["id"] == hook_id
        assert headers["X-Drip-Message-Id"] == _Hook.received[0][0]["X-Drip-Message-Id"]
    finally:
        server.shutdown()
