"""Event ingestion throughput through the real HTTP endpoints, batches of 100.

    python bench/event_ingest.py [--events 20000] [--clients 4] [--workers 2]

Builds a throw-away database (cloned from the harness template: drip_marketing installed,
no demo data), loads customers with email identities and products directly in SQL, starts
``odoo-bin`` as a real multi-process server, and posts pre-serialised batches of 100
events from ``--clients`` threads. Scenarios, all on the same data in the same run:

* ``api_known``: the event API (``POST /drip/api/v1/events``), ``product_viewed`` events
  of known customers (by email) with a product: the figure of BENCHMARKS.md;
* ``api_mixed``: 70 % known customers, 20 % anonymous visitors, 10 % new people (each
  creates a customer and an identity);
* ``segment_known``: Segment's ``/v1/batch`` with gzip bodies, as the SDKs send them;
* baselines, what an integrator would do without this API, through Odoo's own
  JSON-RPC (``/jsonrpc`` ``execute_kw`` with the same API key):
  ``rpc_naive`` one event per call after a ``search`` of the customer by email, and
  ``rpc_batch`` one ``search_read`` of the batch's customers then one ``create`` of 100
  events (the ORM's batched create).

Reports events/s, per-request latency (p50/p95) and SQL queries per request (from
Odoo's request log), ratios against both baselines, the machine and the git revision,
into ``bench/results/event_ingest.{md,json}``.
"""

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from services import OdooDatabase, free_port, wait_until  # noqa: E402


class BenchDatabase(OdooDatabase):
    # Own prefix: the delivery tests clean up the databases of theirs.
    PREFIX = "drip_ingest_bench"

BATCH = 100
CORES = 2  # the machine of BENCHMARKS.md
RESULTS = REPO / "bench" / "results"


def git_revision():
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError:
        rev = "no-commit"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def machine():
    mem = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024 // 1024
    return {"cores": os.cpu_count(), "memory_gib": mem, "python": platform.python_version()}


# ------------------------------------------------------------------------- data
def prepare(db, customers, products):
    """Customers with email identities, products, a source and an API key (in SQL)."""
    with db.env() as env:
        cr = env.cr
        admin = env.ref("base.user_admin")
        admin.write({"groups_id": [(4, env.ref("drip_marketing.drip_marketing_group_manager").id)]})
        key = env["res.users.apikeys"].with_user(admin).sudo()._generate(None, "bench", None)
        source = env["drip.source"].create({"name": "Bench shop", "rate_limit": 10**7,
                                            "rate_burst": 10**7})
        api_source = env["drip.source"]._event_api_source(admin.company_id)
        api_source.write({"rate_limit": 10**7, "rate_burst": 10**7})
        company = admin.company_id.id
        # Copy an ORM-made customer row (every NOT NULL column gets its real default).
        template = env["res.partner"].create({"name": "Bench template", "email": "t@example.com"})
        env.flush_all()
        cr.execute("SELECT column_name FROM information_schema.columns "
                   "WHERE table_name = 'res_partner' AND column_name <> 'id'")
        columns = [row[0] for row in cr.fetchall()]
        overrides = {
            "name": "'Bench customer ' || g", "complete_name": "'Bench customer ' || g",
            "email": "'bench' || g || '@example.com'",
            "email_normalized": "'bench' || g || '@example.com'",
            "commercial_partner_id": "NULL",
        }
        cr.execute(
            f"""
            INSERT INTO res_partner ({', '.join(f'"{c}"' for c in columns)})
            SELECT {', '.join(overrides.get(c, f'p."{c}"') for c in columns)}
              FROM res_partner p, generate_series(1, %s) g WHERE p.id = %s
            """,
            [customers, template.id],
        )
        cr.execute("UPDATE res_partner SET commercial_partner_id = id "
                   "WHERE commercial_partner_id IS NULL")
        cr.execute(
            """
            INSERT INTO drip_identity (partner_id, company_id, kind, value, first_seen_at,
                                       last_seen_at, create_date, write_date)
            SELECT id, %s, 'email', email_normalized, now(), now(), now(), now()
              FROM res_partner WHERE email LIKE 'bench%%@example.com'
            """,
            [company],
        )
        product_ids = [env["product.product"].create({"name": f"Bench product {i}",
                                                      "default_code": f"BENCH-{i}"}).id
                       for i in range(products)]
        cr.execute("ANALYZE res_partner; ANALYZE drip_identity; ANALYZE drip_event")
        return {"api_key": key, "write_key": source.sudo().write_key,
                "products": product_ids, "customers": customers}


def api_batches(count, data, run, mix=None):
    """Pre-serialised event API bodies of ``BATCH`` events."""
    bodies, n = [], 0
    for b in range(count):
        events = []
        for i in range(BATCH):
            n += 1
            event = {"type": "product_viewed", "idempotency_key": f"{run}-{b}-{i}",
                     "occurred_at": "2026-11-23T10:00:00Z",
                     "product_id": data["products"][n % len(data["products"])],
                     "properties": {"url": f"/shop/product-{n % 50}", "price": 19.9}}
            roll = (n * 7919) % 100
            if mix and roll < 20:
                event["anonymous_id"] = f"anon-{run}-{n % 500}"
            elif mix and roll < 30:
                event["email"] = f"new-{run}-{n}@example.com"
            else:
                event["email"] = f"bench{(n * 31) % data['customers'] + 1}@example.com"
            events.append(event)
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def segment_batches(count, data, run):
    bodies, n = [], 0
    sent_at = datetime.now(UTC).isoformat()
    for b in range(count):
        batch = []
        for _i in range(BATCH):
            n += 1
            batch.append({
                "type": "track", "event": "Product Viewed", "messageId": f"{run}-{b}-{n}",
                "userId": None, "anonymousId": f"device-{n % 1000}",
                "timestamp": sent_at,
                "context": {"library": {"name": "analytics-python", "version": "2.4.0"},
                            "traits": {"email": f"bench{(n * 31) % data['customers'] + 1}"
                                                f"@example.com"}},
                "properties": {"sku": f"BENCH-{n % len(data['products'])}", "price": 19.9},
                "integrations": {},
            })
        body = json.dumps({"batch": batch, "sentAt": sent_at, "writeKey": data["write_key"]})
        bodies.append(gzip.compress(body.encode()))
    return bodies


# ------------------------------------------------------------------------- clients
def run_clients(bodies, clients, send, expect=200):
    """Post ``bodies`` from ``clients`` threads; (wall seconds, latencies)."""
    position = iter(range(len(bodies)))
    lock = threading.Lock()
    latencies, errors = [], []

    def worker():
        session = requests.Session()
        while True:
            with lock:
                index = next(position, None)
            if index is None:
                return
            start = time.perf_counter()
            response = send(session, bodies[index])
            elapsed = time.perf_counter() - start
            if response.status_code != expect:
                errors.append(f"{response.status_code} {response.text[:300]}")
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return wall, latencies


def api_sender(base, key):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return lambda session, body: session.post(f"{base}/drip/api/v1/events", data=body,
                                              headers=headers, timeout=120)


def segment_sender(base, write_key):
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    return lambda session, body: session.post(f"{base}/drip/segment/v1/batch", data=body,
                                              headers=headers, auth=(write_key, ""),
                                              timeout=120)


def rpc(session, base, dbname, key, model, method, args, kwargs=None):
    payload = {"jsonrpc": "2.0", "method": "call", "id": 1, "params": {
        "service": "object", "method": "execute_kw",
        "args": [dbname, 2, key, model, method, args, kwargs or {}]}}
    response = session.post(f"{base}/jsonrpc", json=payload, timeout=120)
    body = response.json()
    if "error" in body:
        raise RuntimeError(body["error"]["data"]["message"])
    return response, body["result"]


def rpc_naive_sender(base, dbname, key, type_id):
    """One JSON-RPC search + one create per event (what a first integration does)."""

    def send(session, body):
        response = None
        for event in json.loads(body)["events"]:
            response, found = rpc(session, base, dbname, key, "res.partner", "search",
                                  [[["email", "=", event["email"]]]], {"limit": 1})
            response, _id = rpc(session, base, dbname, key, "drip.event", "create", [{
                "name": event["type"], "event_type_id": type_id,
                "partner_id": found[0] if found else False,
                "idempotency_key": event["idempotency_key"],
                "occurred_at": "2026-11-23 10:00:00", "product_id": event["product_id"],
                "payload": event["properties"],
            }])
        return response

    return send


def rpc_batch_sender(base, dbname, key, type_id):
    """One search_read of the batch's customers, one create of its 100 events."""

    def send(session, body):
        events = json.loads(body)["events"]
        _response, found = rpc(session, base, dbname, key, "res.partner", "search_read",
                               [[["email", "in", [e["email"] for e in events]]]],
                               {"fields": ["email"]})
        by_email = {row["email"]: row["id"] for row in found}
        response, _ids = rpc(session, base, dbname, key, "drip.event", "create", [[{
            "name": e["type"], "event_type_id": type_id,
            "partner_id": by_email.get(e["email"], False),
            "idempotency_key": e["idempotency_key"], "occurred_at": "2026-11-23 10:00:00",
            "product_id": e["product_id"], "payload": e["properties"],
        } for e in events]])
        return response

    return send


def explain_insert(db, data):
    """EXPLAIN (ANALYZE, BUFFERS) of the event INSERT of one api_known batch, rolled back.

    The batch goes through the controller's own validation and ``drip.ingest._ingest``;
    the INSERT INTO drip_event is run once under EXPLAIN in a savepoint, then for real.
    """
    from odoo.addons.drip_marketing.controllers import events as api

    body = json.loads(api_batches(1, data, f"explain{uuid.uuid4().hex[:6]}")[0])
    plans = []
    with db.env() as env:
        cr = env.cr
        admin = env.ref("base.user_admin")
        env = env(user=admin.id, context={"allowed_company_ids": [admin.company_id.id]})
        company = env.company
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        source, region = env["drip.ingest"]._source_context(company_id=company.id)
        events, errors = api.validate_events(body, now, region)
        errors += api.DripEventApiController()._drip_check_references(env, company, events)
        assert not errors, errors
        execute = cr.execute

        def explaining(query, params=None, log_exceptions=True):
            if isinstance(query, str) and query.lstrip().startswith("INSERT INTO drip_event "):
                with cr.savepoint(flush=False):
                    execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params)
                    plans.append(cr.fetchone()[0][0])
            return execute(query, params, log_exceptions)

        cr.execute = explaining
        try:
            env["drip.ingest"]._ingest(events, source, now=now, keys_checked=True)
        finally:
            cr.execute = execute
            cr.rollback()
    plan = plans[0]
    triggers = {t["Constraint Name"]: round(t["Time"], 2) for t in plan.get("Triggers", [])}
    buffers = {k: v for k, v in plan["Plan"].items() if k.startswith("Shared")}
    return {"execution_ms": round(plan["Execution Time"], 2),
            "planning_ms": round(plan["Planning Time"], 2),
            "foreign_key_triggers_ms": round(sum(triggers.values()), 2),
            "triggers": triggers, "buffers": buffers, "rows": plan["Plan"]["Actual Rows"]}


# ------------------------------------------------------------------------- server
class Server:
    def __init__(self, db, workers):
        self.db, self.workers = db, workers
        self.port = free_port()
        self.log_path = db.workdir / "server.log"

    def __enter__(self):
        # -d without --db-filter: Odoo then serves that database without listing the
        # databases (a new PostgreSQL connection) on every request that has no session,
        # which API calls never have.
        args = ["-c", str(self.db.conf), "-d", self.db.dbname, f"--http-port={self.port}",
                "--max-cron-threads=0",
                "--log-level=info", f"--logfile={self.log_path}", "--limit-time-real=600",
                "--limit-memory-soft=4294967296", "--limit-memory-hard=5368709120",
                f"--gevent-port={free_port()}"]
        if self.workers:
            args.append(f"--workers={self.workers}")
        self.process = subprocess.Popen(self.db.odoo_cmd(*args), env=self.db.env_vars(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

        def up():
            try:
                return requests.get(f"{self.base}/web/login", timeout=2).status_code == 200
            except requests.RequestException:
                return None

        wait_until(up, timeout=120, what="odoo-bin listening")
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=60)

    def queries(self, path, since):
        """SQL queries per request of ``path`` logged after byte offset ``since``."""
        counts = []
        with open(self.log_path, "rb") as log:
            log.seek(since)
            for line in log:
                match = re.search(rb'"POST ' + re.escape(path.encode()) +
                                  rb' HTTP/1.1" \d+ - (\d+) ', line)
                if match:
                    counts.append(int(match.group(1)))
        return statistics.median(counts) if counts else None

    def cpu_seconds(self):
        """(odoo-bin processes, PostgreSQL backends of the database) CPU seconds so far."""
        odoo = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    odoo += times.user + times.system
        except psutil.Error:
            pass
        pg = 0.0
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["name"] == "postgres" and self.db.dbname in " ".join(
                        proc.info["cmdline"] or []):
                    times = proc.cpu_times()
                    pg += times.user + times.system
        return odoo, pg

    def log_size(self):
        return self.log_path.stat().st_size if self.log_path.exists() else 0


def scenario(server, name, bodies, clients, send, path, events_per_body=BATCH, expect=200):
    mark = server.log_size()
    odoo_before, pg_before = server.cpu_seconds()
    load_before = os.getloadavg()[0]
    wall, latencies = run_clients(bodies, clients, send, expect)
    odoo_cpu, pg_cpu = (after - before for after, before in
                        zip(server.cpu_seconds(), (odoo_before, pg_before), strict=True))
    time.sleep(0.5)  # let the workers flush their log lines
    events = len(bodies) * events_per_body
    latencies.sort()
    result = {
        "scenario": name, "events": events, "requests": len(bodies), "seconds": round(wall, 3),
        "events_per_s": round(events / wall, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p95_ms": round(1000 * latencies[int(len(latencies) * 0.95) - 1], 1),
        "queries_per_request": server.queries(path, mark),
        "odoo_cpu_ms_per_request": round(1000 * odoo_cpu / len(bodies), 1),
        "pg_cpu_ms_per_request": round(1000 * pg_cpu / len(bodies), 1),
        # What the server's own CPU time allows on CORES dedicated cores: a figure that
        # does not depend on what else runs on this (shared) machine.
        "cpu_bound_events_per_s": round(CORES * events / max(odoo_cpu + pg_cpu, 1e-9), 1),
        "load_average": round((load_before + os.getloadavg()[0]) / 2, 1),
    }
    print(f"  {name:14s} {result['events_per_s']:>9.1f} events/s  "
          f"p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  "
          f"queries/request {result['queries_per_request']}  CPU/request odoo "
          f"{result['odoo_cpu_ms_per_request']} ms + pg {result['pg_cpu_ms_per_request']} ms "
          f"-> {result['cpu_bound_events_per_s']} events/s on {CORES} cores "
          f"(load {result['load_average']})", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="events per scenario")
    parser.add_argument("--baseline-events", type=int, default=2000,
                        help="events for the naive JSON-RPC baseline (slow)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="odoo-bin --workers (0: threaded)")
    parser.add_argument("--customers", type=int, default=100000)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    batches = max(1, args.events // BATCH)
    workdir = Path(tempfile.mkdtemp(prefix="drip-bench-ingest-"))
    print(f"building the database in {workdir} …", flush=True)
    db = BenchDatabase(workdir).create()
    results = []
    try:
        db.open_registry()
        data = prepare(db, args.customers, 200)
        with db.env() as env:
            type_id = env.ref("drip_marketing.event_type_product_viewed").id
            versions = {
                "postgresql": env.cr.connection.server_version,
                "odoo": __import__("odoo.release", fromlist=["version"]).version,
            }
        run = uuid.uuid4().hex[:8]
        with Server(db, args.workers) as server:
            print(f"odoo-bin --workers={args.workers}, {args.clients} client threads, "
                  f"{args.customers} customers, batches of {BATCH}", flush=True)
            warm = api_batches(20, data, f"warm{run}")
            run_clients(warm, args.clients, api_sender(server.base, data["api_key"]))
            run_clients(segment_batches(10, data, f"warm{run}"), args.clients,
                        segment_sender(server.base, data["write_key"]))
            # Odoo's own cost of a request to the endpoint, with no ingestion work:
            # the same bodies, refused at once (401, no API key).
            floor = scenario(server, "http_floor", api_batches(batches, data, f"f{run}"),
                             args.clients, api_sender(server.base, None),
                             "/drip/api/v1/events", expect=401)
            results.append(scenario(server, "api_known", api_batches(batches, data, f"k{run}"),
                                    args.clients, api_sender(server.base, data["api_key"]),
                                    "/drip/api/v1/events"))
            results.append(scenario(server, "api_mixed",
                                    api_batches(batches, data, f"m{run}", mix=True),
                                    args.clients, api_sender(server.base, data["api_key"]),
                                    "/drip/api/v1/events"))
            results.append(scenario(server, "segment_known",
                                    segment_batches(batches, data, f"s{run}"), args.clients,
                                    segment_sender(server.base, data["write_key"]),
                                    "/drip/segment/v1/batch"))
            results.append(scenario(server, "rpc_batch",
                                    api_batches(batches, data, f"b{run}"), args.clients,
                                    rpc_batch_sender(server.base, db.dbname, data["api_key"],
                                                     type_id), "/jsonrpc"))
            naive = api_batches(max(1, args.baseline_events // BATCH), data, f"n{run}")
            results.append(scenario(server, "rpc_naive", naive, args.clients,
                                    rpc_naive_sender(server.base, db.dbname, data["api_key"],
                                                     type_id), "/jsonrpc"))
        insert_plan = explain_insert(db, data)
        with db.env() as env:
            env.cr.execute("SELECT count(*) FROM drip_identity_conflict")
            conflicts = env.cr.fetchone()[0]
    finally:
        if not args.keep:
            db.drop()
    by_name = {r["scenario"]: r for r in results}
    for result in results:
        naive, batch = by_name["rpc_naive"], by_name["rpc_batch"]
        result["x_rpc_naive"] = round(result["events_per_s"] / naive["events_per_s"], 1)
        result["x_rpc_batch"] = round(result["events_per_s"] / batch["events_per_s"], 2)
    report = {
        "benchmark": "event_ingest", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(), "machine": machine(), "versions": versions,
        "settings": {"batch": BATCH, "clients": args.clients, "workers": args.workers,
                     "customers": args.customers, "events": batches * BATCH},
        "target_events_per_s": 5000, "results": results, "http_floor": floor,
        "insert_plan": insert_plan, "identity_conflicts_recorded": conflicts,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "event_ingest.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Event ingestion (batches of 100, real HTTP)", "",
        f"{report['date']} · git {report['git']} · {report['machine']['cores']} cores, "
        f"{report['machine']['memory_gib']} GiB · PostgreSQL {versions['postgresql']} · "
        f"Odoo {versions['odoo']} · odoo-bin --workers={args.workers} · {args.clients} "
        f"client threads · {args.customers} customers", "",
        "| scenario | events | events/s | × rpc_naive | × rpc_batch | p50 ms | p95 ms | "
        "SQL/request | Odoo CPU ms/request | PG CPU ms/request | CPU-bound events/s "
        f"({CORES} cores) | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['scenario']} | {r['events']} | {r['events_per_s']} | "
                     f"{r['x_rpc_naive']} | {r['x_rpc_batch']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['queries_per_request']} | "
                     f"{r['odoo_cpu_ms_per_request']} | {r['pg_cpu_ms_per_request']} | "
                     f"{r['cpu_bound_events_per_s']} | {r['load_average']} |")
    known = by_name["api_known"]
    met = known["events_per_s"] >= 5000
    odoo_work = round(known["odoo_cpu_ms_per_request"] - floor["odoo_cpu_ms_per_request"], 1)
    pg_work = round(known["pg_cpu_ms_per_request"] - floor["pg_cpu_ms_per_request"], 1)
    lines += [
        "", "## Where a request's CPU goes (api_known, 100 events)", "",
        f"* Odoo's own floor — `http_floor`, the same requests refused at once (401, no "
        f"key): {floor['odoo_cpu_ms_per_request']} ms of Odoo CPU and "
        f"{floor['pg_cpu_ms_per_request']} ms of PostgreSQL CPU per request "
        f"({floor['queries_per_request']} SQL: WSGI, routing, registry signalling, "
        "cursor, transaction).",
        f"* Ingestion itself: {odoo_work} ms of Odoo CPU (key check, JSON parsing, "
        f"validation, identity planning, response) and {pg_work} ms of PostgreSQL CPU "
        f"per request above that floor.",
        f"* The INSERT of the 100 rows (`EXPLAIN (ANALYZE, BUFFERS)`): "
        f"{insert_plan['execution_ms']} ms, of which {insert_plan['foreign_key_triggers_ms']} "
        f"ms are the {len(insert_plan['triggers'])} foreign-key checks PostgreSQL runs per "
        "row (" + ", ".join(f"{name.removeprefix('drip_event_').removesuffix('_fkey')} "
                            f"{ms}" for name, ms in insert_plan["triggers"].items()) + " ms). "
        "They are kept: they carry the erasure cascade (partner), the restrict on event types "
        "and companies, and set-null on products, orders, sources and users.",
        "* `api_mixed` is bound by Odoo's `res.partner` create of its newcomers (10 per "
        "request); `segment_known` sends 1,000 devices shared by 100,000 customers, so its "
        "events also record identity conflicts (one row each, with its own foreign keys): "
        f"{conflicts} in this run.",
    ]
    lines += [
        "", f"Target ≥ 5,000 events/s (api_known): **{'met' if met else 'missed'}** "
        f"({known['events_per_s']} events/s measured at load average "
        f"{known['load_average']}; the server's own CPU time allows "
        f"{known['cpu_bound_events_per_s']} events/s on {CORES} dedicated cores).",
        "", "SQL/request counts the statements of Odoo's cursor; the identities INSERT "
        "(psycopg2 execute_values, only when a batch brings new identifiers) and the rate "
        "limiter's statement (its own autocommit connection) are not in it.",
        "", "The machine is shared: events/s is what the server delivered at the load average "
        "shown; the CPU-bound column divides the cores by the CPU time Odoo's workers and "
        "PostgreSQL's backends spent per event in this scenario, which other processes do "
        "not inflate as much.",
    ]
    (RESULTS / "event_ingest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
