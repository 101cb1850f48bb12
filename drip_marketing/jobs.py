"""RQ job functions of drip_marketing.

Jobs carry a database name and message ids, never content: the database is the source
of truth and each job starts by checking that its messages still need it (rows that
another job, a retry or the reaper already handled are skipped by the claim). As OCA's
``queue_job`` puts it, the moment a job runs is unknown by design.

A job opens the Odoo registry of its database (cached per process: the worker pays the
loading cost once), hands the ids to ``drip.delivery._deliver`` and lets it commit in a
cursor the job owns. A transient failure (SMTP 4xx, server down, webhook 5xx) raises
:class:`RetryDelivery` so that RQ's ``Retry(max=3, interval=[10, 60, 300])`` runs the job
again; the rows wait in ``queued`` meanwhile, and the reaper re-enqueues them if Redis
loses the job.
"""

import logging
import threading

_logger = logging.getLogger(__name__)


class RetryDelivery(Exception):
    """Some messages of the job failed transiently; RQ should run the job again."""


def _environment(dbname):
    from odoo import SUPERUSER_ID, api  # noqa: F401 - imported lazily (worker startup)
    from odoo.modules.registry import Registry

    registry = Registry(dbname).check_signaling()
    threading.current_thread().dbname = dbname
    return registry


def deliver(dbname, message_ids):
    """Deliver these ``drip.message`` ids (RQ job). Returns a small summary."""
    from odoo import SUPERUSER_ID, api

    registry = _environment(dbname)
    try:
        with registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            summary = env["drip.delivery"]._deliver(list(message_ids))
            # Visible with `rq info` / in the job result: what this batch cost.
            summary["queries"] = cr.sql_log_count
    except Exception:
        registry.reset_changes()
        raise
    registry.signal_changes()
    if summary.get("retry"):
        raise RetryDelivery(
            f"{len(summary['retry'])} message(s) failed transiently and wait in 'queued' "
            f"for a retry: {summary['retry'][:10]}"
        )
    _logger.debug("drip job on %s: %s", dbname, summary)
    return summary


def reap(dbname):
    """Run the reaper once (handy from ``rq`` tooling; the cron does it every minute)."""
    from odoo import SUPERUSER_ID, api

    registry = _environment(dbname)
    with registry.cursor() as cr:
        api.Environment(cr, SUPERUSER_ID, {})["drip.delivery"]._cron_reap()
    return True
