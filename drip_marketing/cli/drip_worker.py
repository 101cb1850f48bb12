"""``odoo-bin drip-worker``: RQ workers delivering Drip Marketing messages.

::

    odoo-bin drip-worker -c odoo.conf -d DB [--queues drip_transactional,drip_bulk]
                         [--processes N] [--burst] [--redis-url redis://…] [--max-jobs N]

Each worker process opens the Odoo registry of ``DB`` once and runs an RQ
``SimpleWorker``: jobs run in the process itself, never in a forked child, because
Odoo's registry and connection pool must not cross a ``fork()``. RQ's scheduler (which
runs delayed retries) runs as a thread of the worker instead of a forked process for
the same reason. ``--processes N`` starts N such processes; they are forked *before* any
registry or database connection exists, and restarted when they stop (after
``--max-jobs`` jobs, or past Odoo's ``limit_memory_soft``), which keeps memory flat.

Queues default to the two of Settings (transactional first, so a reminder never waits
behind a campaign); run dedicated workers with ``--queues drip_transactional`` to
guarantee that. The Redis URL comes from ``--redis-url``, ``DRIP_REDIS_URL`` or Settings.
Watch the queues with RQ's own tools (``rq info --url redis://…``, rq-dashboard).

Discovery note: ``odoo-bin`` finds this command before reading ``-c``; give the addons
path through ``ODOO_RC`` (or ``~/.odoorc``), or as the first argument:
``odoo-bin --addons-path=… drip-worker -c odoo.conf -d DB``.
"""

import logging
import optparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import odoo
from odoo.cli import Command
from odoo.tools import config

_logger = logging.getLogger(__name__)


def _rss_bytes():
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss
    except Exception:  # noqa: BLE001 - no psutil: no memory check
        return 0


def _worker_classes():
    """RQ classes that never fork (imported lazily: rq is an optional dependency)."""
    from rq import SimpleWorker
    from rq.scheduler import RQScheduler
    from rq.scheduler import run as run_scheduler

    class ThreadScheduler(RQScheduler):
        """RQ's scheduler as a thread of the worker: no fork, so no shared connection."""

        def start(self):
            self._status = self.Status.STARTED
            self._connection = None  # its own Redis pool
            self._process = threading.Thread(
                target=run_scheduler, args=(self,), name="rq-scheduler", daemon=True
            )
            self._process.start()
            return self._process

        def _install_signal_handlers(self):
            """Signals belong to the main thread (the worker)."""

    class OdooWorker(SimpleWorker):
        """``SimpleWorker`` with a threaded scheduler and Odoo's memory limit."""

        memory_limit = 0

        def _start_scheduler(self, burst=False, logging_level="INFO",
                             date_format=None, log_format=None):
            self.scheduler = ThreadScheduler(
                self.queues,
                connection=self.connection,
                logging_level=logging_level if logging_level is not None else self.log.level,
                serializer=self.serializer,
            )
            self.scheduler.acquire_locks()
            if self.scheduler.acquired_locks:
                if burst:
                    try:
                        self.scheduler.register_birth()
                        self.scheduler.enqueue_scheduled_jobs()
                    finally:
                        self.scheduler.release_locks()
                        self.scheduler.register_death()
                else:
                    self.scheduler.start()

        def stop_scheduler(self):
            thread = self.scheduler and self.scheduler._process
            if thread:
                self.scheduler.request_stop()
                thread.join(timeout=5)

        def execute_job(self, job, queue):
            result = super().execute_job(job, queue)
            if self.memory_limit and _rss_bytes() > self.memory_limit:
                _logger.info("drip-worker %s: memory above limit_memory_soft, restarting",
                             self.name)
                self._stop_requested = True
            return result

    return OdooWorker


class DripWorker(Command):
    """Run RQ workers delivering Drip Marketing messages (opens the registry once)"""

    name = "drip-worker"

    def run(self, args):
        parser = config.parser
        parser.prog = f"{Path(sys.argv[0]).name} {self.name}"
        group = optparse.OptionGroup(parser, "Drip Marketing worker")
        group.add_option("--queues", dest="drip_queues", default="",
                         help="Comma-separated RQ queues, in priority order "
                              "(default: the transactional then the bulk queue of Settings).")
        group.add_option("--processes", dest="drip_workers", type="int", default=1,
                         help="Worker processes to run (default 1; Odoo's own --workers "
                              "is about HTTP workers).")
        group.add_option("--burst", dest="drip_burst", action="store_true", default=False,
                         help="Stop when the queues are empty.")
        group.add_option("--redis-url", dest="drip_redis_url", default="",
                         help="Redis URL (default: DRIP_REDIS_URL, then Settings).")
        group.add_option("--max-jobs", dest="drip_max_jobs", type="int", default=0,
                         help="Restart a worker process after this many jobs (0: never).")
        group.add_option("--no-scheduler", dest="drip_no_scheduler", action="store_true",
                         default=False, help="Do not run RQ's scheduler (delayed retries).")
        group.add_option("--worker-name", dest="drip_worker_name", default="",
                         help="RQ worker name prefix (default: host and pid).")
        parser.add_option_group(group)
        opt = config.parse_config(args, setup_logging=True)
        dbname = (config["db_name"] or "").split(",")[0].strip()
        if not dbname:
            sys.exit("drip-worker needs a database: -d DB")
        odoo.service.server.load_server_wide_modules()
        if opt.drip_workers > 1:
            sys.exit(self._supervise(opt, dbname))
        sys.exit(self._work(opt, dbname))

    # ------------------------------------------------------------------ one process
    def _work(self, opt, dbname, index=0):
        import redis
        from rq import Queue

        from odoo import SUPERUSER_ID, api
        from odoo.modules.registry import Registry

        threading.current_thread().dbname = dbname
        registry = Registry(dbname)
        with registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            delivery = env["drip.delivery"]
            url = opt.drip_redis_url or delivery._redis_url()
            names = [name.strip() for name in opt.drip_queues.split(",") if name.strip()]
            if not names:
                queues = delivery._queue_names()
                names = [queues["transactional"], queues["bulk"]]
        if not url:
            _logger.error("drip-worker: no Redis URL (Settings, DRIP_REDIS_URL or "
                          "--redis-url); without Redis the scheduled action delivers inline.")
            return 2
        # Jobs read DRIP_REDIS_URL too, e.g. when they re-enqueue.
        os.environ.setdefault("DRIP_REDIS_URL", url)
        connection = redis.Redis.from_url(url)
        Worker = _worker_classes()
        Worker.memory_limit = config.get("limit_memory_soft") or 0
        prefix = opt.drip_worker_name or f"drip-{os.uname().nodename}"
        worker = Worker(
            [Queue(name, connection=connection) for name in names],
            connection=connection,
            name=f"{prefix}-{os.getpid()}-{index}",
        )
        _logger.info("drip-worker %s: database %s, queues %s, %s", worker.name, dbname,
                     ", ".join(names), "burst" if opt.drip_burst else "waiting for jobs")
        worker.work(
            burst=opt.drip_burst,
            with_scheduler=not opt.drip_no_scheduler,
            max_jobs=opt.drip_max_jobs or None,
            logging_level=logging.getLevelName(logging.getLogger().level),
        )
        return 0

    # ------------------------------------------------------------------ supervisor
    def _supervise(self, opt, dbname):
        """Fork ``--processes`` processes before any registry exists; restart the ones that
        stop on their own (max jobs, memory), stop all on SIGINT/SIGTERM."""
        children = {}
        stopping = False

        def spawn(index):
            pid = os.fork()
            if pid == 0:  # child: its own registry, connections and Redis pool
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = 1
                try:
                    code = self._work(opt, dbname, index)
                finally:
                    os._exit(code)
            children[pid] = index

        def stop(signum, _frame):
            nonlocal stopping
            stopping = True
            for pid in list(children):
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for index in range(opt.drip_workers):
            spawn(index)
        status = 0
        while children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = children.pop(pid, None)
            if index is None:
                continue
            exit_code = os.waitstatus_to_exitcode(code)
            if stopping or opt.drip_burst:
                status = status or max(exit_code, 0)
                continue
            _logger.info("drip-worker process %s exited (%s); starting a new one", pid,
                         exit_code)
            time.sleep(1 if exit_code else 0)
            spawn(index)
        return status
