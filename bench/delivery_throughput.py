"""End-to-end delivery throughput: cron staging → RQ workers → SMTP sink.

    python bench/delivery_throughput.py [--messages 3000] [--workers 1,2] [--batch 100]
                                        [--commit-every 1] [--no-baseline] [--keep]

On a throw-away database (cloned from the harness template), for each worker count:
``--messages`` abandoned carts enter a cart journey whose first reminder is due; the
workers (``odoo-bin drip-worker --processes N``, already waiting on their queues) are
timed from the start of staging until the SMTP sink (aiosmtpd, loopback) holds every
message. Each message goes through the whole path: claim, consent + blacklist + goal +
caps + quiet hours, Jinja2 render, link tracking, MIME (Odoo's ``build_email``), SMTP,
ledger, next steps and the chatter log.

Also measured:

* staging: ``_cron_process_due`` moving due rows to ``queued`` and enqueueing the RQ jobs
  (messages/s, SQL statements and Redis commands per 1,000 messages);
* SQL statements per 1,000 delivered messages, from the job results (``queries``);
* worker RSS at the end of the run;
* the **baseline**, same carts and equivalent template, Odoo's own path in one process:
  ``mail.template.send_mail_batch`` (render + ``mail.mail``) then the mail queue's
  ``process_email_queue`` (what an automation rule "send email" and the mail cron do).
  The ratio ``drip (N workers) / baseline`` is the comparable figure (BENCHMARKS.md).

Writes ``bench/results/delivery_throughput.{md,json}`` (``…_commit<N>`` with
``--commit-every N``) with machine, versions and the git revision. Absolute rates depend
on the machine's load; the ratios and the worker CPU per message are the figures to
compare.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from services import OdooDatabase, RedisServer, SmtpSink, wait_until  # noqa: E402

RESULTS = REPO / "bench" / "results"
SUBJECT = "您的购物车还在等您, {{ partner.first_name }}"
BODY = (
    "<p>Hi {{ partner.name }},</p><p>You left these in your cart:</p><ul>"
    "{% for line in cart.lines %}<li>{{ line.product_name }} × {{ line.quantity | number }}"
    " — {{ line.price_subtotal | money(cart.currency) }}</li>{% endfor %}</ul>"
    "<p>Total {{ cart.amount_total | money(cart.currency) }}. "
    '<a href="https://shop.example.com/cart">Back to your cart</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)
# The same message for Odoo's own renderer (inline_template on sale.order).
BASELINE_SUBJECT = "您的购物车还在等您, {{ object.partner_id.name.split(' ')[0] }}"
BASELINE_BODY = (
    "<p>Hi <t t-out=\"object.partner_id.name\"/>,</p><p>You left these in your cart:</p><ul>"
    "<t t-foreach=\"object.order_line\" t-as=\"line\"><li><t t-out=\"line.product_id."
    "display_name\"/> × <t t-out=\"line.product_uom_qty\"/> — <t t-out=\"line."
    "price_subtotal\"/></li></t></ul><p>Total <t t-out=\"object.amount_total\"/>. "
    '<a href="https://shop.example.com/cart">Back to your cart</a></p>'
)


class BenchDatabase(OdooDatabase):
    PREFIX = "drip_bench_delivery"


class CountingSink(SmtpSink):
    """The harness's aiosmtpd sink without its per-message parse.

    The test sink parses every mail (``email.policy.default``) to let tests read
    headers; here only the count is read, and that parse (≈ 1 ms of the machine's two
    cores per mail, in the process that also times the run) would be charged to the
    path under test. A real MTA runs elsewhere. ``--parsing-sink`` uses the test sink.
    """

    async def on_data(self, envelope):
        with self.lock:
            self.data_commands += 1
            self.messages.append(envelope.content)
        return "250 2.0.0 OK"


def git_revision():
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "no-commit") + (
        "+dirty" if git("status", "--porcelain") else "")


def machine(db, redis):
    with open("/proc/meminfo") as meminfo:
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    import rq

    import odoo.release

    with db.env() as env:
        env.cr.execute("SHOW server_version")
        postgres = env.cr.fetchone()[0]
    return {
        "cores": os.cpu_count(), "memory_gib": round(kib / 1024 / 1024),
        "load_average": os.getloadavg(), "python": platform.python_version(),
        "postgresql": postgres, "redis": redis.client().info("server")["redis_version"],
        "odoo": odoo.release.version, "rq": rq.__version__,
    }


# --------------------------------------------------------------------------- data
def make_carts(db, count, tag):
    """``count`` customers with an idle cart of 3 lines; returns the order ids."""
    with db.env() as env:
        products = env["product.product"].create([
            {"name": f"茶 Tea {tag} {i}", "list_price": 10.0 + i} for i in range(3)])
        partners = env["res.partner"].create([
            {"name": f"Bench {tag} {i}", "email": f"bench.{tag}.{i}@example.com",
             "lang": "en_US", "tz": "UTC"}
            for i in range(count)
        ])
        orders = env["sale.order"].create([
            {"partner_id": partner.id, "drip_is_cart": True, "order_line": [
                (0, 0, {"product_id": product.id, "product_uom_qty": 1 + n})
                for n, product in enumerate(products)]}
            for partner in partners
        ])
        env.flush_all()
        env.cr.execute(
            "UPDATE sale_order SET drip_cart_activity_at = now() AT TIME ZONE 'UTC' "
            "- interval '3 hours' WHERE id = ANY(%s)", [orders.ids])
        return orders.ids


def make_journey(db, tag):
    from datetime import timedelta

    with db.env() as env:
        template = env["drip.template"].create({
            "name": f"Bench {tag}", "channel": "email", "subject": SUBJECT,
            "body_html": BODY, "body_text": "Hi {{ partner.name }}, your cart is waiting."})
        journey = env["drip.journey"].create({
            "name": f"Bench {tag}", "trigger": "cart_abandoned", "goal_type": "order",
            "transactional": True, "reentry_policy": "per_source", "cart_lookback_hours": 48})
        env["drip.step"].create({
            "journey_id": journey.id, "name": "Reminder", "step_type": "send",
            "channel": "email", "template_id": template.id, "delay_value": 0})
        journey.action_start()
        env.flush_all()
        past = journey.activated_at - timedelta(minutes=10)
        env.cr.execute("UPDATE drip_journey SET activated_at = %s, scan_watermark = %s "
                       "WHERE id = %s", [past, past, journey.id])
        return journey.id


def enroll(db, journey_id):
    with db.env() as env:
        env["drip.journey"]._cron_scan_triggers()
    with db.env() as env:
        env.cr.execute("SELECT id FROM drip_message WHERE journey_id = %s AND state = "
                       "'scheduled' AND scheduled_at <= now() AT TIME ZONE 'UTC'",
                       [journey_id])
        return [row[0] for row in env.cr.fetchall()]


def stop_journey(db, journey_id, order_ids):
    with db.env() as env:
        env["drip.journey"].browse(journey_id).action_stop()
        env.cr.execute("UPDATE sale_order SET state = 'cancel' WHERE id = ANY(%s)",
                       [order_ids])


# --------------------------------------------------------------------------- runs
def redis_commands(client):
    return sum(stats["calls"] for stats in client.info("commandstats").values())


class RoundTrips:
    """Counts Redis round trips of this process (a pipeline's ``execute`` is one)."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        from redis.connection import AbstractConnection

        self.original = original = AbstractConnection.send_packed_command

        def send_packed_command(connection, *args, **kwargs):
            self.count += 1
            return original(connection, *args, **kwargs)

        AbstractConnection.send_packed_command = send_packed_command
        return self

    def __exit__(self, *exc):
        from redis.connection import AbstractConnection

        AbstractConnection.send_packed_command = self.original


def stage_all(db, client):
    """Run the minute cron's processing until nothing is due; cost of staging.

    Returns seconds, SQL statements, Redis commands and Redis round trips of the
    staging itself (the ``count(*)`` that decides whether to loop is not counted).
    """
    start_commands = redis_commands(client)
    queries = 0
    trips = 0
    started = time.perf_counter()
    while True:
        with db.env() as env:
            before = env.cr.sql_log_count
            with RoundTrips() as counter:
                env["drip.message"]._cron_process_due(batch_size=1000)
                env.cr.commit()  # the enqueue runs after the commit
            trips += counter.count
            queries += env.cr.sql_log_count - before
            env.cr.execute("SELECT count(*) FROM drip_message WHERE state = 'scheduled' "
                           "AND scheduled_at <= now() AT TIME ZONE 'UTC'")
            remaining = env.cr.fetchone()[0]
        if not remaining:
            break
    seconds = time.perf_counter() - started
    # The INFO calls themselves are not part of staging.
    return seconds, queries, redis_commands(client) - start_commands - 1, trips


def run_staging(db, redis, count, tag):
    """Staging alone (no worker listening): the cron's cost without competition."""
    journey_id = make_journey(db, tag)
    order_ids = make_carts(db, count, tag)
    ids = enroll(db, journey_id)
    client = redis.client()
    client.flushall()
    seconds, queries, commands, trips = stage_all(db, client)
    with db.env() as env:
        env.cr.execute("SELECT count(*) FROM drip_message WHERE id = ANY(%s) AND state = "
                       "'queued'", [ids])
        queued = env.cr.fetchone()[0]
    jobs = sum(client.llen(key) for key in client.scan_iter("rq:queue:*")
               if client.type(key) == b"list")
    client.flushall()
    stop_journey(db, journey_id, order_ids)
    with db.env() as env:  # nobody will deliver these: keep them out of later runs
        env.cr.execute("UPDATE drip_message SET state = 'cancelled' WHERE id = ANY(%s)",
                       [ids])
    return {
        "messages": count, "queued": queued, "jobs": jobs, "seconds": round(seconds, 3),
        "messages_per_s": round(count / seconds, 1),
        "sql_per_1000": round(queries * 1000 / count, 1),
        "redis_commands_per_1000": round(commands * 1000 / count, 1),
        "redis_round_trips_per_1000": round(trips * 1000 / count, 2),
    }


def rss_mib(pid):
    try:
        import psutil

        process = psutil.Process(pid)
        return [round(child.memory_info().rss / 2**20, 1)
                for child in process.children(recursive=True)] or [
            round(process.memory_info().rss / 2**20, 1)]
    except Exception:  # noqa: BLE001
        return []


def cpu_seconds(pid):
    """User + system CPU of the worker processes (load-independent cost)."""
    try:
        import psutil

        process = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(True)])
    except Exception:  # noqa: BLE001
        return 0.0


def run_drip(db, redis, sink, count, workers, tag):
    from rq import Worker

    journey_id = make_journey(db, tag)
    order_ids = make_carts(db, count, tag)
    ids = enroll(db, journey_id)
    assert len(ids) == count, (len(ids), count)
    client = redis.client()
    client.flushall()
    before_sink = sink.count()
    process = db.worker_process(redis.url, ["drip_transactional", "drip_bulk"], burst=False,
                                workers=workers)
    try:
        wait_until(lambda: len(Worker.all(connection=client)) >= workers, 180, 0.2,
                   "the workers to start")
        cpu_before = cpu_seconds(process.pid)
        started = time.perf_counter()
        stage_seconds, stage_queries, stage_redis, stage_trips = stage_all(db, client)
        first = []
        rss_warm = []

        def done():
            received = sink.count() - before_sink
            if received and not first:
                first.append(time.perf_counter())
            if received >= count // 10 and not rss_warm:
                rss_warm.append(rss_mib(process.pid))
            return received >= count

        wait_until(done, 1800, 0.05, "the sink to receive every message")
        finished = time.perf_counter()
        rss = rss_mib(process.pid)
        cpu = cpu_seconds(process.pid) - cpu_before
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    jobs = queries = 0
    from rq.job import Job

    for key in client.scan_iter("rq:job:*"):
        job = Job.fetch(key.decode().split(":", 2)[2], connection=client)
        result = job.return_value()
        if isinstance(result, dict):
            jobs += 1
            queries += result.get("queries", 0)
    with db.env() as env:
        env.cr.execute("SELECT state, count(*) FROM drip_message WHERE id = ANY(%s) "
                       "GROUP BY state", [ids])
        states = dict(env.cr.fetchall())
    stop_journey(db, journey_id, order_ids)
    total = finished - started
    return {
        "workers": workers,
        "messages": count,
        "states": states,
        "seconds": round(total, 2),
        "messages_per_s": round(count / total, 1),
        "worker_window_per_s": round(count / (finished - first[0]), 1) if first else None,
        "staging_seconds": round(stage_seconds, 3),
        "staging_per_s": round(count / stage_seconds, 1),
        "staging_sql_per_1000": round(stage_queries * 1000 / count, 1),
        "staging_redis_commands_per_1000": round(stage_redis * 1000 / count, 1),
        "staging_redis_round_trips_per_1000": round(stage_trips * 1000 / count, 2),
        "jobs": jobs,
        "sql_per_1000_delivered": round(queries * 1000 / count, 1),
        "worker_cpu_ms_per_message": round(cpu * 1000 / count, 2),
        "worker_rss_mib": rss,
        "worker_rss_mib_at_10_percent": rss_warm[0] if rss_warm else [],
        "load_average_at_end": round(os.getloadavg()[0], 2),
    }


def run_baseline(db, sink, count, tag):
    """Odoo's own path, in a process of its own (as the mail cron would run it)."""
    order_ids = make_carts(db, count, tag)
    before = sink.count()
    result = subprocess.run(
        [sys.executable, __file__, "--baseline-child", db.dbname, str(db.conf),
         ",".join(map(str, order_ids))],
        capture_output=True, text=True, timeout=3600, env=db.env_vars(),
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    wait_until(lambda: sink.count() - before >= count, 60, 0.1, "baseline mails")
    with db.env() as env:
        env.cr.execute("UPDATE sale_order SET state = 'cancel' WHERE id = ANY(%s)",
                       [order_ids])
    total = timings["render_seconds"] + timings["send_seconds"]
    return dict(timings, messages=count, seconds=round(total, 2),
                load_average_at_end=round(os.getloadavg()[0], 2),
                messages_per_s=round(count / total, 1),
                sql_per_1000_delivered=round(timings["queries"] * 1000 / count, 1),
                cpu_ms_per_message=round(timings["cpu_seconds"] * 1000 / count, 2))


def baseline_child(dbname, conf, order_ids):
    sys.path.insert(0, os.environ.get("ODOO") or str(Path.home() / ".cache/drip_marketing"
                                                     / "odoo-18.0"))
    import odoo
    from odoo import SUPERUSER_ID, api
    from odoo.modules.registry import Registry
    from odoo.tools import config

    config.parse_config(["-c", conf], setup_logging=False)
    odoo.service.server.load_server_wide_modules()
    registry = Registry(dbname)
    ids = [int(i) for i in order_ids.split(",")]
    with registry.cursor() as cr:
        env = api.Environment(cr, SUPERUSER_ID, {})
        template = env["mail.template"].create({
            "name": "Baseline cart reminder", "model_id": env["ir.model"]._get_id("sale.order"),
            "subject": BASELINE_SUBJECT, "body_html": BASELINE_BODY,
            "email_from": "shop@example.com", "email_to": "{{ object.partner_id.email }}",
            "auto_delete": True,
        })
        cr.commit()
        start = time.perf_counter()
        cpu = time.process_time()
        queries = cr.sql_log_count
        template.send_mail_batch(ids)
        cr.commit()
        rendered = time.perf_counter()
        env["mail.mail"].process_email_queue(batch_size=len(ids) + 10)
        cr.commit()
        sent = time.perf_counter()
        print(json.dumps({"render_seconds": round(rendered - start, 2),
                          "send_seconds": round(sent - rendered, 2),
                          "queries": cr.sql_log_count - queries,
                          "cpu_seconds": round(time.process_time() - cpu, 2)}))


# --------------------------------------------------------------------------- report
def write_report(results, args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The default (exactly-once window of one message) is the reference file; other
    # hand-off groupings get their own, so both can be compared side by side.
    suffix = "" if args.commit_every == 1 else f"_commit{args.commit_every}"
    stem = RESULTS / f"delivery_throughput{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    base = results.get("baseline")
    lines = [
        "# Delivery throughput (cron staging → RQ workers → SMTP sink)",
        "",
        f"`python bench/delivery_throughput.py --messages {args.messages} --workers "
        f"{args.workers} --batch {args.batch} --commit-every {args.commit_every}` — "
        f"{results['date']}, revision `{results['revision']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()),
        "",
        "| run | messages | seconds | messages/s | worker window msg/s | worker CPU ms "
        "/ message | SQL / 1,000 delivered | ratio vs Odoo's own path | load (1 min) at "
        "the end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        ratio = f"{run['messages_per_s'] / base['messages_per_s']:.1f}×" if base else "–"
        lines.append(
            f"| drip, {run['workers']} worker(s) | {run['messages']} | {run['seconds']} | "
            f"**{run['messages_per_s']}** | {run['worker_window_per_s']} | "
            f"{run['worker_cpu_ms_per_message']} | {run['sql_per_1000_delivered']} | {ratio} | "
            f"{run.get('load_average_at_end', '–')} |")
    if base:
        lines.append(
            f"| Odoo `mail.template.send_mail_batch` + `process_email_queue` (baseline) | "
            f"{base['messages']} | {base['seconds']} | {base['messages_per_s']} | – | "
            f"{base['cpu_ms_per_message']} | {base['sql_per_1000_delivered']} | 1.0× | "
            f"{base.get('load_average_at_end', '–')} |")
    lines += ["", "| staging (cron → queued + RQ jobs) | messages/s | SQL / 1,000 | Redis "
              "commands / 1,000 | Redis round trips / 1,000 |", "|---|---|---|---|---|"]
    alone = results.get("staging")
    if alone:
        lines.append(f"| alone (no worker running), {alone['messages']} messages, "
                     f"{alone['jobs']} jobs | **{alone['messages_per_s']}** | "
                     f"{alone['sql_per_1000']} | {alone['redis_commands_per_1000']} | "
                     f"{alone['redis_round_trips_per_1000']} |")
    for run in results["runs"]:
        lines.append(f"| while the {run['workers']} worker(s) already deliver | "
                     f"{run['staging_per_s']} | {run['staging_sql_per_1000']} | "
                     f"{run['staging_redis_commands_per_1000']} | "
                     f"{run.get('staging_redis_round_trips_per_1000', '–')} |")

    def growth(run):
        warm, end = run["worker_rss_mib_at_10_percent"], run["worker_rss_mib"]
        if not warm or not end or len(warm) != len(end):
            return "–"
        return f"{max((e - w) * 100 / w for w, e in zip(warm, end, strict=True)):+.1f} %"

    lines += ["", "Worker RSS (MiB) after 10 % of the messages → at the end (largest growth): "
              + "; ".join(
        f"{run['workers']} worker(s): {run['worker_rss_mib_at_10_percent']} → "
        f"{run['worker_rss_mib']} ({growth(run)})" for run in results["runs"]),
        "", "States after each run: " + "; ".join(
        f"{run['workers']}: {run['states']}" for run in results["runs"]), "",
        f"SMTP sink: {results.get('sink', 'aiosmtpd')}.", ""]
    if base:
        best = max(run["messages_per_s"] for run in results["runs"])
        two = [run for run in results["runs"] if run["workers"] == 2]
        rows = [
            ("end-to-end, 2 workers ≥ 500 msg/s", two and two[0]["messages_per_s"] >= 500,
             two and two[0]["messages_per_s"]),
            ("≥ 25× Odoo's own path", best / base["messages_per_s"] >= 25,
             f"{best / base['messages_per_s']:.1f}×"),
            ("≤ 20 SQL / 1,000 delivered",
             min(run["sql_per_1000_delivered"] for run in results["runs"]) <= 20,
             min(run["sql_per_1000_delivered"] for run in results["runs"])),
        ]
        if alone:
            rows += [
                ("staging ≥ 3,000 msg/s", alone["messages_per_s"] >= 3000,
                 alone["messages_per_s"]),
                ("staging ≤ 10 SQL / 1,000", alone["sql_per_1000"] <= 10,
                 alone["sql_per_1000"]),
                ("staging ≤ 3 Redis round trips / 1,000",
                 alone["redis_round_trips_per_1000"] <= 3,
                 alone["redis_round_trips_per_1000"]),
            ]
        lines += ["| target | measured | met |", "|---|---|---|"] + [
            f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, ok, value in rows
        ] + [""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch", type=int, default=100, help="message ids per RQ job")
    parser.add_argument("--commit-every", type=int, default=1,
                        help="hand-offs per commit (1: the exactly-once window is 1 message)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--parsing-sink", action="store_true",
                        help="the test suite's sink, which parses every mail")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--baseline-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        baseline_child(*args.baseline_child)
        return
    os.environ.pop("DRIP_REDIS_URL", None)
    workdir = Path(tempfile.mkdtemp(prefix="drip-bench-delivery-"))
    db = BenchDatabase(workdir).create()
    redis = RedisServer(workdir / "redis").start()
    sink = (SmtpSink if args.parsing_sink else CountingSink)().start()
    try:
        db.open_registry()
        with db.env() as env:
            env.company.write({"email": "shop@example.com", "drip_quiet_hours_start": 0.0,
                               "drip_quiet_hours_end": 0.0, "drip_cap_per_day": 0,
                               "drip_cap_per_week": 0})
            env["ir.cron"].search([]).write({"active": False})
            env["ir.mail_server"].search([]).write({"active": False})
            env["ir.mail_server"].create({"name": "sink", "smtp_host": "127.0.0.1",
                                          "smtp_port": sink.port, "smtp_encryption": "none"})
            params = {"redis_url": redis.url, "job_batch_size": args.batch,
                      "smtp_commit_every": args.commit_every}
            for key, value in params.items():
                env["ir.config_parameter"].set_param(f"drip_marketing.{key}", str(value))
        results = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                   "revision": git_revision(), "machine": machine(db, redis),
                   "settings": vars(args), "runs": [],
                   "sink": "aiosmtpd, parsing every mail (the test suite's)"
                   if args.parsing_sink else "aiosmtpd, counting only (no parse)"}
        # Warm-up (template compile, registry caches), not reported.
        run_drip(db, redis, sink, 100, 1, "warmup")
        results["staging"] = run_staging(db, redis, args.messages, "stage")
        for index, workers in enumerate(int(w) for w in args.workers.split(",")):
            results["runs"].append(run_drip(db, redis, sink, args.messages, workers,
                                            f"r{index}"))
        if not args.no_baseline:
            results["baseline"] = run_baseline(db, sink, args.messages, "base")
        write_report(results, args)
    finally:
        sink.stop()
        redis.stop()
        if not args.keep:
            db.drop()


if __name__ == "__main__":
    main()
