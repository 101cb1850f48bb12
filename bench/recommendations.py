"""Recommendation quality: hit rate at 5 on a time split, against plain best sellers.

    python bench/recommendations.py [--size small] [--keep]

Builds a throw-away database (cloned from the harness template: drip_marketing installed,
no demo data) and generates, with a fixed seed, a shop with real co-purchase structure:

* products in categories, popularity heavy-tailed (Zipf) inside each category; products
  come in *kits* of complementary products (an espresso machine, its beans, its cups),
  a third of the kits with an accessory from another category; 15 % of the products are
  consumables that their buyers buy again;
* customers with two favourite categories and a heavy-tailed number of orders over two
  years; an order starts from an *anchor* product (often a missing piece of a kit the
  customer started, else a popular product of a favourite category), adds other pieces
  of the anchor's kit, sometimes a consumable bought before, sometimes a random product.

Orders before day 600 (of 730) are confirmed orders in ``sale_order``; the statistics are
counted from them by the real scheduled-action code (``_rebuild``, then an incremental
pass over 1 % more orders). For every customer with history, the truth is the set of
products of their **next** order after the split (kept outside ``sale_order``). Hit rate
at 5 = share of those customers of whom at least one of the 5 recommended products is in
that next order. Compared, on the same customers in the same run:

* ``drip_marketing`` — ``drip.product.affinity._recommend_ids`` (the render-time read: one
  query per batch of 500 customers), no seed product (history only);
* ``best_sellers`` — the plain best-sellers baseline: the store's 5 most ordered products,
  the same for everyone;
* ``best_sellers_not_bought`` — the same without products the customer already bought.

Writes ``bench/results/recommendations.{md,json}`` with the machine, versions and git
revision. Exit status 1 when ours does not beat the plain best-sellers baseline.
"""

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "bench"))

from rfm_scale import clone_rows, git_revision, machine  # noqa: E402
from services import OdooDatabase  # noqa: E402


class RecoDatabase(OdooDatabase):
    PREFIX = "drip_bench_reco"


SIZES = {  # customers, products, categories
    "tiny": (1_000, 120, 6),
    "small": (10_000, 600, 20),
    "medium": (50_000, 2_000, 40),
}
RESULTS = REPO / "bench" / "results"
SEED = 42
DAYS = 730
SPLIT_DAY = 600
K = 5
BATCH = 500


# ------------------------------------------------------------------ generation
def generate_shop(rng, customers, products, categories):
    """Plain Python: products (category, popularity, kit, consumable), then the orders
    ``[(customer, day, [product indexes])]``, in chronological order per customer."""
    per_cat = products // categories
    category = np.repeat(np.arange(categories), per_cat)
    products = len(category)
    rank = np.tile(np.arange(1, per_cat + 1), categories)
    popularity = 1.0 / rank ** 0.9
    popularity *= rng.permutation(np.linspace(0.6, 1.6, categories))[category]
    kits, kit_of = [], np.zeros(products, dtype=int)
    for cat in range(categories):
        members = list(rng.permutation(np.flatnonzero(category == cat)))
        for start in range(0, len(members), 4):
            kit = members[start:start + 4]
            if rng.random() < 0.33:
                kit.append(int(rng.integers(products)))  # an accessory from elsewhere
            for product in kit[:4]:
                kit_of[product] = len(kits)
            kits.append([int(p) for p in kit])
    consumable = rng.random(products) < 0.15
    cat_weight = np.bincount(category, weights=popularity)
    cat_weight /= cat_weight.sum()
    global_p = popularity / popularity.sum()
    in_cat = {cat: np.flatnonzero(category == cat) for cat in range(categories)}
    cat_p = {cat: popularity[idx] / popularity[idx].sum() for cat, idx in in_cat.items()}

    orders = []
    for customer in range(customers):
        favourites = rng.choice(categories, size=2, replace=False, p=cat_weight)
        count = 1 + min(int(rng.geometric(0.3)) - 1, 30)
        days = np.sort(rng.integers(0, DAYS, size=count))
        bought, started_kits = set(), []
        for day in days:
            basket = set()
            missing = [p for k in started_kits for p in kits[k] if p not in bought]
            if missing and rng.random() < 0.5:
                anchor = int(rng.choice(missing))
            elif rng.random() < 0.8:
                cat = int(rng.choice(favourites))
                anchor = int(rng.choice(in_cat[cat], p=cat_p[cat]))
            else:
                anchor = int(rng.choice(products, p=global_p))
            basket.add(anchor)
            for other in kits[kit_of[anchor]]:
                if other != anchor and rng.random() < 0.35:
                    basket.add(other)
            refills = [p for p in bought if consumable[p]]
            if refills and rng.random() < 0.5:
                basket.add(int(rng.choice(refills)))
            if rng.random() < 0.15:
                basket.add(int(rng.choice(products, p=global_p)))
            if kit_of[anchor] not in started_kits:
                started_kits.append(kit_of[anchor])
            bought |= basket
            orders.append((customer, int(day), sorted(basket)))
    return category, orders


def insert_shop(env, category, orders, now):
    """Products, customers and the orders before the split in SQL; returns the ids and
    the orders after the split (the truth), as ``{partner_id: [(day, product ids)]}``."""
    cr = env.cr
    categs = env["product.category"].create(
        [{"name": f"Category {c}"} for c in range(int(category.max()) + 1)])
    products = env["product.product"].create([
        {"name": f"Product {i}", "categ_id": categs[int(c)].id, "list_price": 10 + i % 90,
         "type": "consu", "sale_ok": True}
        for i, c in enumerate(category)
    ])
    product_ids = products.ids
    customers = max(o[0] for o in orders) + 1
    partner = env["res.partner"].create({"name": "Bench template", "email": "t@example.com"})
    order = env["sale.order"].create({
        "partner_id": partner.id,
        "order_line": [(0, 0, {"product_id": products[0].id, "product_uom_qty": 1})],
    })
    env.flush_all()
    partner_ids = clone_rows(cr, "res_partner", partner.id, "generate_series(1, %s) g", {
        "name": "'Customer ' || g", "complete_name": "'Customer ' || g",
        "email": "'customer' || g || '@example.com'",
        "email_normalized": "'customer' || g || '@example.com'",
        "commercial_partner_id": "NULL",
    }, [customers])
    cr.execute("UPDATE res_partner SET commercial_partner_id = id "
               "WHERE commercial_partner_id IS NULL")
    train = [(i, o) for i, o in enumerate(orders) if o[1] < SPLIT_DAY]
    truth = {}
    for customer, day, basket in orders:
        if day >= SPLIT_DAY:
            truth.setdefault(partner_ids[customer], []).append(
                (day, [product_ids[p] for p in basket]))
    start = now - timedelta(days=DAYS)
    cr.execute("CREATE TEMP TABLE bench_orders (g int, partner_id int, date_order timestamp)")
    cr.execute("CREATE TEMP TABLE bench_lines (g int, product_id int)")
    rows = [(i, partner_ids[c], start + timedelta(days=d, minutes=i % 1440))
            for i, (c, d, _b) in train]
    lines = [(i, product_ids[p]) for i, (_c, _d, basket) in train for p in basket]
    cr.execute("INSERT INTO bench_orders SELECT * FROM unnest(%s::int[], %s::int[], "
               "%s::timestamp[])", [[r[0] for r in rows], [r[1] for r in rows],
                                    [r[2] for r in rows]])
    cr.execute("INSERT INTO bench_lines SELECT * FROM unnest(%s::int[], %s::int[])",
               [[r[0] for r in lines], [r[1] for r in lines]])
    clone_rows(cr, "sale_order", order.id, "bench_orders b", {
        "name": "'R' || b.g", "partner_id": "b.partner_id", "partner_invoice_id": "b.partner_id",
        "partner_shipping_id": "b.partner_id", "date_order": "b.date_order", "state": "'sale'",
    })
    line_id = order.order_line.id
    clone_rows(cr, "sale_order_line", line_id,
               "bench_lines bl JOIN sale_order so ON so.name = 'R' || bl.g", {
                   "order_id": "so.id", "product_id": "bl.product_id",
                   "order_partner_id": "so.partner_id",
               })
    cr.execute("DELETE FROM sale_order WHERE id = %s", [order.id])
    cr.execute("DROP TABLE bench_orders; DROP TABLE bench_lines")
    cr.execute("ANALYZE res_partner; ANALYZE sale_order; ANALYZE sale_order_line")
    env.invalidate_all()
    return product_ids, len(train), truth


# ------------------------------------------------------------------ evaluation
def evaluate(env, truth, company_id):
    """Hit rate at K of ours and of the baselines, over the customers with history."""
    cr = env.cr
    cr.execute("SELECT partner_id, array_agg(DISTINCT l.product_id) FROM sale_order o "
               "JOIN sale_order_line l ON l.order_id = o.id WHERE o.state = 'sale' "
               "GROUP BY partner_id")
    history = {pid: set(products) for pid, products in cr.fetchall()}
    cr.execute("SELECT l.product_id, count(DISTINCT l.order_id) FROM sale_order_line l "
               "JOIN sale_order o ON o.id = l.order_id WHERE o.state = 'sale' "
               "GROUP BY 1 ORDER BY 2 DESC, 1")
    ranking = [row[0] for row in cr.fetchall()]
    evaluated = sorted(pid for pid in truth if pid in history)
    nexts = {pid: set(min(truth[pid])[1]) for pid in evaluated}
    Affinity = env["drip.product.affinity"]
    ours, seconds, sources = {}, [], Counter()
    for start in range(0, len(evaluated), BATCH):
        batch = evaluated[start:start + BATCH]
        begin = time.perf_counter()
        ranked = Affinity._recommend_ids([(pid, company_id, []) for pid in batch], limit=K)
        seconds.append(time.perf_counter() - begin)
        for (pid, _company), items in ranked.items():
            ours[pid] = [product for product, _source in items]
            sources.update(source for _product, source in items)
    plain = ranking[:K]

    def hit_rate(recommend):
        hits = sum(1 for pid in evaluated if nexts[pid] & set(recommend(pid)))
        return round(hits / len(evaluated), 4)

    def not_bought(pid):
        return [p for p in ranking if p not in history[pid]][:K]

    return {
        "customers_evaluated": len(evaluated),
        "hit_rate": {
            "drip_marketing": hit_rate(lambda pid: ours.get(pid, [])),
            "best_sellers": hit_rate(lambda pid: plain),
            "best_sellers_not_bought": hit_rate(not_bought),
        },
        "shown_per_customer": round(sum(len(v) for v in ours.values()) / len(evaluated), 2),
        "sources": dict(sources),
        "read_ms_per_batch_p50": round(1000 * float(np.median(seconds)), 1),
        "read_ms_per_batch_max": round(1000 * max(seconds), 1),
        "batch_size": BATCH,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    customers, products, categories = SIZES[args.size]
    rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    category, orders = generate_shop(rng, customers, products, categories)
    print(f"{len(orders)} orders of {customers} customers generated in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="drip-bench-reco-"))
    print(f"building the database in {workdir} …", flush=True)
    db = RecoDatabase(workdir).create()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    try:
        db.open_registry()
        with db.env() as env:
            start = time.perf_counter()
            _product_ids, train_orders, truth = insert_shop(env, category, orders, now)
            company_id = env.company.id
            versions = {
                "postgresql": env.cr.connection.server_version,
                "odoo": __import__("odoo.release", fromlist=["version"]).version,
            }
            inserted = round(time.perf_counter() - start, 1)
        print(f"{train_orders} confirmed orders inserted in {inserted} s", flush=True)
        with db.env() as env:
            Affinity = env["drip.product.affinity"]
            # Counting: hold back the last 1 % of the orders for the incremental pass.
            env.cr.execute("SELECT id FROM sale_order WHERE state = 'sale' "
                           "ORDER BY date_order DESC LIMIT %s", [max(1, train_orders // 100)])
            held = [row[0] for row in env.cr.fetchall()]
            env.cr.execute("UPDATE sale_order SET state = 'draft' WHERE id = ANY(%s)", [held])
            begin = time.perf_counter()
            Affinity._rebuild()
            env.cr.commit()
            rebuild_s = round(time.perf_counter() - begin, 2)
            env.cr.execute("UPDATE sale_order SET state = 'sale', date_order = now() at time "
                           "zone 'UTC' WHERE id = ANY(%s)", [held])
            env.cr.commit()
            begin = time.perf_counter()
            counted, _remaining = Affinity._update_from_orders()
            env.cr.commit()
            incremental_s = round(time.perf_counter() - begin, 2)
            env.cr.execute("SELECT count(*), count(*) FILTER (WHERE support >= 3) "
                           "FROM drip_product_affinity")
            pairs, supported = env.cr.fetchone()
            print(f"rebuild {rebuild_s} s, incremental ({counted} orders) {incremental_s} s, "
                  f"{pairs} pairs ({supported} with support ≥ 3)", flush=True)
            quality = evaluate(env, truth, company_id)
            env.cr.rollback()
    finally:
        if not args.keep:
            db.drop()
        else:
            print(f"kept database {db.dbname}")
    rates = quality["hit_rate"]
    report = {
        "benchmark": "recommendations",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(), "machine": machine(), "versions": versions,
        "settings": {"size": args.size, "customers": customers, "products": products,
                     "categories": categories, "orders_generated": len(orders),
                     "orders_before_split": train_orders, "split_day": SPLIT_DAY,
                     "days": DAYS, "k": K, "seed": SEED, "min_support": 3},
        "counting": {"rebuild_seconds": rebuild_s, "incremental_seconds": incremental_s,
                     "incremental_orders": counted, "pairs": pairs,
                     "pairs_min_support": supported},
        "quality": quality,
        "ratio_vs_best_sellers": round(rates["drip_marketing"] / rates["best_sellers"], 2),
        "ratio_vs_best_sellers_not_bought": round(
            rates["drip_marketing"] / rates["best_sellers_not_bought"], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recommendations.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Recommendations: hit rate at {K} on a time split ({args.size})", "",
        f"{report['date']} · git {report['git']} · {report['machine']['cores']} cores, "
        f"{report['machine']['memory_gib']} GiB · PostgreSQL {versions['postgresql']} · "
        f"Odoo {versions['odoo']}", "",
        f"{customers:,} customers, {products:,} products in {categories} categories, "
        f"{train_orders:,} confirmed orders before day {SPLIT_DAY} of {DAYS}; "
        f"{quality['customers_evaluated']:,} customers with history and a next order.", "",
        "| recommender | hit rate @5 | × plain best sellers |",
        "|---|---:|---:|",
    ]
    for name in ("drip_marketing", "best_sellers", "best_sellers_not_bought"):
        lines.append(f"| {name} | {rates[name]:.4f} | "
                     f"{rates[name] / rates['best_sellers']:.2f} |")
    lines += [
        "",
        f"Sources of what we showed: {quality['sources']} "
        f"({quality['shown_per_customer']} per customer).",
        f"Render-time read: {quality['read_ms_per_batch_p50']} ms per batch of {BATCH} "
        f"customers (p50; max {quality['read_ms_per_batch_max']} ms), one query per batch.",
        f"Counting: full rebuild {rebuild_s} s; incremental pass over {counted} new orders "
        f"{incremental_s} s; {pairs:,} pairs stored, {supported:,} with support ≥ 3.",
    ]
    (RESULTS / "recommendations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if rates["drip_marketing"] <= rates["best_sellers"]:
        print("FAIL: not better than the plain best sellers", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
