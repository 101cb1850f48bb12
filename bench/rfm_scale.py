"""RFM recompute at scale: the set-based statement against a naive ORM loop.

    python bench/rfm_scale.py [--size medium] [--naive-sample 2000] [--keep]

Builds a throw-away database (cloned from the harness template: drip_marketing installed,
no demo data), generates customers and orders directly in SQL (``generate_series``, seeded,
so the same size gives the same data) and times ``res.partner._drip_recompute_rfm()``:

* ``first_run``: every customer unscored — the full write;
* ``rerun_same_day``: nothing changed — nothing is written;
* ``rerun_next_day``: one day later with new orders of ~2 % of the customers — the daily
  case of BENCHMARKS.md (only the changed rows are written, segment events recorded);
* ``naive_orm``: the code a first version would write (per customer: ``search`` its
  orders, aggregate in Python, ``write`` the scores), run on ``--naive-sample``
  customers of the same data and extrapolated to all of them; the ratio
  ``naive / first_run`` is the speed-up.

Data: sizes ``small`` 10k customers / 50k orders, ``medium`` 100k / 500k, ``large``
1M / 5M. Orders over two years, heavy-tailed per customer (a few buy often, many once or
never) and in amount (log-normal), 88 % confirmed, 6 % cancelled, 6 % quotations, a fifth
of them in a foreign currency (``currency_rate`` 1.1).

Writes ``bench/results/rfm_scale.{md,json}`` with the machine, versions and git revision.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from services import OdooDatabase  # noqa: E402


class RfmDatabase(OdooDatabase):
    """The harness database under a prefix of its own (other suites clean up theirs)."""

    PREFIX = "drip_bench_rfm"


SIZES = {"small": (10_000, 50_000), "medium": (100_000, 500_000), "large": (1_000_000, 5_000_000)}
RESULTS = REPO / "bench" / "results"
SEED = 0.42


def git_revision():
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "no-commit") + (
        "+dirty" if git("status", "--porcelain") else "")


def machine():
    with open("/proc/meminfo") as meminfo:
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    # The load average says how shared the machine was while timing (ratios hold, the
    # absolute seconds do not).
    return {"cores": os.cpu_count(), "memory_gib": kib // 1024 // 1024,
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 1)}


def clone_rows(cr, table, template_id, source, overrides, params=()):
    """INSERT copies of an ORM-made row, one per row of ``source`` (SQL ``FROM`` item).

    Every column not in ``overrides`` (SQL expressions) keeps the template's value, so
    NOT NULL columns get their real defaults.
    """
    cr.execute("SELECT column_name FROM information_schema.columns "
               "WHERE table_name = %s AND column_name <> 'id'", [table])
    columns = [row[0] for row in cr.fetchall()]
    cr.execute(
        f"""
        INSERT INTO {table} ({', '.join(f'"{c}"' for c in columns)})
        SELECT {', '.join(overrides.get(c, f't."{c}"') for c in columns)}
          FROM {table} t, {source} WHERE t.id = %s
        RETURNING id
        """,
        [*params, template_id],
    )
    return [row[0] for row in cr.fetchall()]


def generate(env, customers, orders, now):
    """Customers and orders in SQL; returns the customer ids."""
    cr = env.cr
    cr.execute("SELECT setseed(%s)", [SEED])
    partner = env["res.partner"].create({"name": "Bench template", "email": "t@example.com"})
    order = env["sale.order"].create({"partner_id": partner.id})
    env.flush_all()
    partner_ids = clone_rows(cr, "res_partner", partner.id, "generate_series(1, %s) g", {
        "name": "'Customer ' || g", "complete_name": "'Customer ' || g",
        "email": "'customer' || g || '@example.com'",
        "email_normalized": "'customer' || g || '@example.com'",
        "commercial_partner_id": "NULL",
    }, [customers])
    cr.execute("UPDATE res_partner SET commercial_partner_id = id "
               "WHERE commercial_partner_id IS NULL")
    first = min(partner_ids)
    # Customer index skewed towards low numbers (x² of a uniform), amounts log-normal
    # (Box-Muller), dates uniform over two years.
    cr.execute(
        """
        CREATE TEMP TABLE bench_orders AS
        SELECT g,
               %(first)s + floor(%(customers)s * power(random(), 2))::int AS partner_id,
               %(now)s::timestamp - make_interval(secs => random() * 730 * 86400) AS date_order,
               round(exp(3.5 + 1.1 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
                     ::numeric, 2) AS amount,
               random() AS roll, random() AS fx
          FROM generate_series(1, %(orders)s) g
        """,
        {"first": first, "customers": customers, "now": now, "orders": orders},
    )
    clone_rows(cr, "sale_order", order.id, "bench_orders b", {
        "name": "'B' || b.g",
        "partner_id": "b.partner_id", "partner_invoice_id": "b.partner_id",
        "partner_shipping_id": "b.partner_id", "date_order": "b.date_order",
        "state": "CASE WHEN b.roll < 0.88 THEN 'sale' WHEN b.roll < 0.94 THEN 'cancel' "
                 "ELSE 'draft' END",
        "amount_untaxed": "b.amount", "amount_total": "b.amount", "amount_tax": "0",
        "currency_rate": "CASE WHEN b.fx < 0.2 THEN 1.1 ELSE 1 END",
    })
    cr.execute("DROP TABLE bench_orders")
    cr.execute("ANALYZE res_partner; ANALYZE sale_order")
    return partner_ids


def timed(env, now):
    start = time.perf_counter()
    changed = env["res.partner"]._drip_recompute_rfm(now=now)
    env.cr.commit()  # noqa: B950 - our own cursor: the write is part of what is measured
    return round(time.perf_counter() - start, 2), changed


def naive(env, partner_ids, sample, now):
    """Per customer: search its orders, aggregate in Python, write — extrapolated."""
    from odoo.addons.drip_marketing.engine import rfm

    ids = partner_ids[:: max(1, len(partner_ids) // sample)][:sample]
    Partner, Order = env["res.partner"], env["sale.order"]
    start = time.perf_counter()
    since = now - timedelta(days=365)
    rows = []
    for partner_id in ids:
        orders = Order.search([("partner_id", "=", partner_id), ("state", "=", "sale"),
                               ("date_order", ">=", since), ("date_order", "<=", now)])
        if orders:
            rows.append((partner_id, min((now - o.date_order).days for o in orders),
                         len(orders), sum(o.amount_untaxed / (o.currency_rate or 1)
                                          for o in orders)))
    scores = rfm.score_partners(rows)
    for partner_id, (r, f, m) in scores.items():
        Partner.browse(partner_id).write({
            "drip_rfm_r": r, "drip_rfm_f": f, "drip_rfm_m": m, "drip_rfm_score": f"{r}{f}{m}",
            "drip_rfm_segment": rfm.segment_for(r, f, m),
        })
    env.flush_all()
    elapsed = time.perf_counter() - start
    env.cr.rollback()
    return round(elapsed * len(partner_ids) / len(ids), 1), len(ids), round(elapsed, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default="medium")
    parser.add_argument("--naive-sample", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    customers, orders = SIZES[args.size]
    workdir = Path(tempfile.mkdtemp(prefix="drip-bench-rfm-"))
    print(f"building the database in {workdir} …", flush=True)
    db = RfmDatabase(workdir).create()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    results = []
    try:
        db.open_registry()
        with db.env() as env:
            start = time.perf_counter()
            partner_ids = generate(env, customers, orders, now)
            env["ir.config_parameter"].set_param("drip_marketing.rfm_last_run", False)
            generated = round(time.perf_counter() - start, 1)
            versions = {
                "postgresql": env.cr.connection.server_version,
                "odoo": __import__("odoo.release", fromlist=["version"]).version,
            }
        print(f"{customers} customers, {orders} orders generated in {generated} s", flush=True)
        with db.env() as env:
            seconds, changed = timed(env, now)
            results.append({"run": "first_run", "seconds": seconds, "rows_written": changed})
            print(f"first run: {seconds} s, {changed} customers written", flush=True)
            seconds, changed = timed(env, now)
            results.append({"run": "rerun_same_day", "seconds": seconds, "rows_written": changed})
            print(f"re-run, nothing changed: {seconds} s, {changed} written", flush=True)
            tomorrow = now + timedelta(days=1)
            env.cr.execute("SELECT setseed(%s)", [SEED / 2])
            env.cr.execute(
                """
                INSERT INTO sale_order (name, partner_id, partner_invoice_id,
                                        partner_shipping_id, company_id, currency_id,
                                        date_order, state, amount_untaxed, amount_total,
                                        amount_tax, currency_rate, create_date, write_date)
                SELECT 'N' || p.id, p.id, p.id, p.id, t.company_id, t.currency_id,
                       %s - interval '2 hours', 'sale', 50, 50, 0, 1, now(), now()
                  FROM res_partner p, (SELECT company_id, currency_id FROM sale_order
                                        LIMIT 1) t
                 WHERE p.id = ANY(%s) AND random() < 0.02
                """,
                [tomorrow, partner_ids],
            )
            new_orders = env.cr.rowcount
            env.cr.commit()
            seconds, changed = timed(env, tomorrow)
            env.cr.execute("SELECT count(*) FROM drip_event e JOIN drip_event_type t "
                           "ON t.id = e.event_type_id WHERE t.code = 'rfm_segment_changed'")
            events = env.cr.fetchone()[0]
            results.append({"run": "rerun_next_day", "seconds": seconds, "rows_written": changed,
                            "new_orders": new_orders, "segment_events": events})
            print(f"next day, {new_orders} new orders: {seconds} s, {changed} written, "
                  f"{events} segment events", flush=True)
            extrapolated, sampled, sample_seconds = naive(env, partner_ids, args.naive_sample,
                                                          now)
            results.append({"run": "naive_orm", "seconds": extrapolated,
                            "sample": sampled, "sample_seconds": sample_seconds,
                            "extrapolated": True})
            print(f"naive ORM loop: {sample_seconds} s for {sampled} customers, "
                  f"≈ {extrapolated} s for all", flush=True)
    finally:
        if not args.keep:
            db.drop()
        else:
            print(f"kept database {db.dbname}")
    by_run = {r["run"]: r for r in results}
    first = by_run["first_run"]["seconds"]
    for result in results:
        result["x_vs_naive"] = round(by_run["naive_orm"]["seconds"] / result["seconds"], 1) \
            if result["seconds"] else None
    report = {
        "benchmark": "rfm_scale", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(), "machine": machine(), "versions": versions,
        "settings": {"size": args.size, "customers": customers, "orders": orders,
                     "window_days": 365, "seed": SEED, "generated_seconds": generated},
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"rfm_scale_{args.size}"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# RFM recompute, {args.size}: {customers:,} customers / {orders:,} orders", "",
        f"{report['date']} · git {report['git']} · {report['machine']['cores']} cores, "
        f"{report['machine']['memory_gib']} GiB (load average "
        f"{report['machine']['load_average_1m']}) · PostgreSQL {versions['postgresql']} · "
        f"Odoo {versions['odoo']}", "",
        "| run | seconds | customers written | × naive ORM |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        written = r.get("rows_written", f"(sample {r.get('sample')})")
        lines.append(f"| {r['run']} | {r['seconds']} | {written} | {r['x_vs_naive']} |")
    lines += ["", f"naive_orm is extrapolated from {by_run['naive_orm']['sample']} customers "
              f"({by_run['naive_orm']['sample_seconds']} s). First run {first} s."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
