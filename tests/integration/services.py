"""Real services for delivery tests and benchmarks: Odoo database, Redis, SMTP sink.

Nothing here is mocked: ``RedisServer`` runs a ``redis-server`` process on a free loopback
port, ``SmtpSink`` is an ``aiosmtpd`` server, ``OdooDatabase`` clones a throw-away
database from a template with drip_marketing installed (built once per source hash with
``odoo-bin -i``) and opens its registry in this process.

Configuration comes from the harness (``scripts/setup`` writes ``DRIP_ODOO_CONF`` and
``ODOO``); without it, from ``DRIP_TEST_DB_USER`` / ``DRIP_TEST_DB_PASSWORD`` /
``PGHOST`` / ``PGPORT`` and ``~/.cache/drip_marketing/odoo-18.0``.
"""

import asyncio
import configparser
import contextlib
import email
import email.policy
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "drip_marketing"
CACHE = Path(os.environ.get("DRIP_CACHE") or Path.home() / ".cache" / "drip_marketing")


def odoo_root():
    root = os.environ.get("ODOO") or os.environ.get("DRIP_ODOO_ROOT") or CACHE / "odoo-18.0"
    return Path(root)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- Redis
class RedisServer:
    """A private ``redis-server`` on a loopback port; stop/start keep the port."""

    def __init__(self, workdir):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def ready():
            try:
                return client.ping()
            except redis.RedisError:
                return False

        wait_until(ready, 10, what="redis-server")
        client.close()
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


# --------------------------------------------------------------------------- SMTP
class SmtpSink:
    """An ``aiosmtpd`` server recording what it accepts.

    * ``refuse(n, reply)``: the next ``n`` messages get ``reply`` (e.g. ``451 …``).
    * ``stall_at(k)``: the k-th message (1-based, counting accepted ones) is held after
      its data arrived and before any reply, until ``release()``; it is then answered
      with a 451 and not recorded (as a server that did not keep it). ``stalled`` is an
      event set while a message is held.
    """

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.messages = []
        self.lock = threading.Lock()
        self._refuse = []
        self._stall_at = None
        self.stalled = threading.Event()
        self._release = threading.Event()
        self.data_commands = 0
        self.controller = Controller(
            _SinkHandler(self), hostname="127.0.0.1", port=self.port,
            decode_data=False, enable_SMTPUTF8=True, data_size_limit=None,
        )

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self._release.set()
        with contextlib.suppress(Exception):
            self.controller.stop()

    def refuse(self, count, reply="451 4.3.0 Try again later"):
        with self.lock:
            self._refuse.extend([reply] * count)

    def stall_at(self, index):
        self._stall_at = index
        self.stalled.clear()
        self._release.clear()

    def release(self):
        self._release.set()

    def count(self):
        with self.lock:
            return len(self.messages)

    def by_message_id(self):
        counts = {}
        with self.lock:
            for message in self.messages:
                counts[message["Message-ID"]] = counts.get(message["Message-ID"], 0) + 1
        return counts

    async def on_data(self, envelope):
        with self.lock:
            self.data_commands += 1
            if self._refuse:
                return self._refuse.pop(0)
            stall = self._stall_at is not None and len(self.messages) + 1 == self._stall_at
        if stall:
            self._stall_at = None
            self.stalled.set()
            while not self._release.is_set():
                await asyncio.sleep(0.02)
            return "451 4.3.0 Not kept"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parsed.envelope_to = list(envelope.rcpt_tos)
        with self.lock:
            self.messages.append(parsed)
        return "250 2.0.0 OK"


class _SinkHandler:
    def __init__(self, sink):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        return await self.sink.on_data(envelope)


# --------------------------------------------------------------------------- Odoo
def harness_config():
    """Database settings and addons path of the harness (scripts/setup), else defaults."""
    conf = os.environ.get("DRIP_ODOO_CONF")
    if not conf:
        key = f"{REPO.name}-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}"
        candidate = CACHE / "instances" / key / "odoo.conf"
        conf = str(candidate) if candidate.exists() else None
    options = {}
    if conf and Path(conf).exists():
        parser = configparser.ConfigParser()
        parser.read(conf)
        options = dict(parser["options"])
    user = os.environ.get("DRIP_TEST_DB_USER") or options.get("db_user") or os.environ.get(
        "PGUSER") or "drip"
    password = os.environ.get("DRIP_TEST_DB_PASSWORD") or options.get("db_password") or \
        os.environ.get("PGPASSWORD") or user
    return {
        "db_host": options.get("db_host") or os.environ.get("PGHOST") or "127.0.0.1",
        "db_port": options.get("db_port") or os.environ.get("PGPORT") or "5432",
        "db_user": user,
        "db_password": password,
        "addons_path": f"{odoo_root() / 'odoo' / 'addons'},{REPO}",
    }


def addon_hash():
    digest = hashlib.sha256()
    for path in sorted(ADDON.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".xml", ".csv", ".js", ".scss"):
            digest.update(str(path.relative_to(ADDON)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class OdooDatabase:
    """A throw-away Odoo database with drip_marketing, cloned from a cached template."""

    PREFIX = "drip_delivery_it"

    def __init__(self, workdir, http_port=None):
        self.workdir = Path(workdir)
        self.settings = harness_config()
        self.http_port = http_port or free_port()
        self.data_dir = self.workdir / "data"
        self.conf = self.workdir / "odoo.conf"
        self.dbname = f"{self.PREFIX}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template = f"{self.PREFIX}_tpl_{addon_hash()}"
        self.registry = None

    # -- configuration
    def write_conf(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = ["[options]"] + [f"{k} = {v}" for k, v in self.settings.items()] + [
            f"data_dir = {self.data_dir}",
            "http_interface = 127.0.0.1",
            f"http_port = {self.http_port}",
            f"gevent_port = {free_port()}",
            "without_demo = all",
            "max_cron_threads = 0",
            "log_level = warn",
            "limit_time_real = 600",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        return self.conf

    def odoo_cmd(self, *args):
        return [sys.executable, str(odoo_root() / "odoo-bin"), *args]

    def env_vars(self):
        env = dict(os.environ)
        env.pop("DRIP_REDIS_URL", None)
        env["ODOO_RC"] = str(self.conf)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _connect(self, dbname="postgres"):

        s = self.settings
        connection = psycopg2.connect(host=s["db_host"], port=s["db_port"], user=s["db_user"],
                                      password=s["db_password"], dbname=dbname)
        connection.autocommit = True
        return connection

    def _exists(self, cr, name):
        cr.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return bool(cr.fetchone())

    # -- lifecycle
    def create(self):
        self.write_conf()
        lock_path = Path(tempfile.gettempdir()) / f"{self.template}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            connection = self._connect()
            with connection.cursor() as cr:
                self._drop_orphans(cr)
                if not self._exists(cr, self.template):
                    self._build_template(cr)
                cr.execute(f'CREATE DATABASE "{self.dbname}" TEMPLATE "{self.template}"')
            connection.close()
        template_store = self._template_filestore()
        if template_store.exists():
            shutil.copytree(template_store, self.data_dir / "filestore" / self.dbname)
        return self

    def _drop_orphans(self, cr):
        """Databases of earlier sessions whose process is gone (a killed test run)."""
        cr.execute("SELECT datname FROM pg_database WHERE datname ~ %s",
                   [f"^{self.PREFIX}_[0-9]+_[0-9a-f]+$"])
        for (name,) in cr.fetchall():
            pid = int(name[len(self.PREFIX) + 1:].split("_")[0])
            try:
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            with contextlib.suppress(Exception):
                cr.execute(f'DROP DATABASE "{name}"')

    def _template_filestore(self):
        return CACHE / "test-templates" / self.template / "filestore" / self.template

    def _build_template(self, cr):
        """Install drip_marketing into a new template database.

        The addon changes often while it is developed: when a template of an older source
        exists, it is cloned and updated (``-u``, about a minute) rather than installed
        from scratch with Odoo's sale and mail stack (several minutes).
        """
        cr.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY oid DESC",
                   [f"{self.PREFIX}_tpl_%"])
        older = [name for (name,) in cr.fetchall() if not name.endswith("_building")]
        building = f"{self.template}_building"
        if self._exists(cr, building):
            cr.execute(f'DROP DATABASE "{building}"')
        data_dir = CACHE / "test-templates" / self.template
        shutil.rmtree(data_dir, ignore_errors=True)
        (data_dir / "filestore").mkdir(parents=True)
        result = None
        if older:
            cr.execute(f'CREATE DATABASE "{building}" TEMPLATE "{older[0]}"')
            old_store = CACHE / "test-templates" / older[0] / "filestore" / older[0]
            if old_store.exists():
                shutil.copytree(old_store, data_dir / "filestore" / building)
            result = self._odoo_init(building, data_dir, "-u")
            if not self._installed(cr, building, result):
                cr.execute(f'DROP DATABASE IF EXISTS "{building}"')
                shutil.rmtree(data_dir / "filestore" / building, ignore_errors=True)
                result = None
        if result is None:
            result = self._odoo_init(building, data_dir, "-i")
            if not self._installed(cr, building, result):
                raise RuntimeError(
                    f"installing drip_marketing failed ({result.returncode}):\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-6000:]}")
        cr.execute(f'ALTER DATABASE "{building}" RENAME TO "{self.template}"')
        store = data_dir / "filestore" / building
        if store.exists():
            store.rename(data_dir / "filestore" / self.template)
        for name in older:  # templates of older sources are of no further use
            with contextlib.suppress(Exception):
                cr.execute(f'DROP DATABASE "{name}"')
                shutil.rmtree(CACHE / "test-templates" / name, ignore_errors=True)

    def _odoo_init(self, dbname, data_dir, mode):
        return subprocess.run(
            self.odoo_cmd("-c", str(self.conf), "-d", dbname, mode, "drip_marketing",
                          "--stop-after-init", f"--data-dir={data_dir}"),
            env=self.env_vars(), capture_output=True, text=True, timeout=1800,
        )

    def _installed(self, cr, dbname, result):
        return (result.returncode == 0 and self._exists(cr, dbname)
                and " ERROR " not in result.stderr and " CRITICAL " not in result.stderr)

    def open_registry(self):
        """Load Odoo in this process and open the registry of the database."""
        root = str(odoo_root())
        if root not in sys.path:
            sys.path.insert(0, root)
        import odoo
        from odoo.modules.registry import Registry
        from odoo.tools import config

        config.parse_config(["-c", str(self.conf)], setup_logging=False)
        odoo.service.server.load_server_wide_modules()
        threading.current_thread().dbname = self.dbname
        self.registry = Registry(self.dbname)
        return self.registry

    def drop(self):
        if self.registry is not None:
            import odoo
            from odoo.modules.registry import Registry

            Registry.delete(self.dbname)
            odoo.sql_db.close_db(self.dbname)
            self.registry = None
        connection = self._connect()
        with connection.cursor() as cr:
            # Our own leftover sessions only: autovacuum (a superuser process) is stopped
            # by DROP DATABASE itself, and other roles' sessions are not ours to kill.
            cr.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()",
                [self.dbname],
            )
            for attempt in range(5):
                try:
                    cr.execute(f'DROP DATABASE IF EXISTS "{self.dbname}"')
                    break
                except psycopg2.errors.ObjectInUse:
                    if attempt == 4:
                        raise
                    time.sleep(1)
        connection.close()
        shutil.rmtree(self.data_dir / "filestore" / self.dbname, ignore_errors=True)

    @contextlib.contextmanager
    def env(self):
        """An environment on a fresh cursor, committed on success (postcommit hooks run)."""
        from odoo import SUPERUSER_ID, api

        with self.registry.cursor() as cr:
            yield api.Environment(cr, SUPERUSER_ID, {})

    def worker_process(self, redis_url, queues=None, burst=True, workers=1, extra=()):
        """``odoo-bin drip-worker`` as a subprocess (discovery through ODOO_RC)."""
        args = ["drip-worker", "-c", str(self.conf), "-d", self.dbname,
                "--redis-url", redis_url, "--processes", str(workers)]
        if queues:
            args += ["--queues", ",".join(queues)]
        if burst:
            args.append("--burst")
        args += list(extra)
        log = open(self.workdir / f"worker-{uuid.uuid4().hex[:6]}.log", "w")
        process = subprocess.Popen(self.odoo_cmd(*args), env=self.env_vars(), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        process.log_path = log.name
        return process


def run_worker_in_process(redis_url, queue_names, burst=True, max_jobs=None):
    """An RQ ``SimpleWorker`` (the drip-worker class) in this very process."""
    import redis
    from rq import Queue

    from odoo.addons.drip_marketing.cli.drip_worker import _worker_classes

    connection = redis.Redis.from_url(redis_url)
    Worker = _worker_classes()
    worker = Worker([Queue(name, connection=connection) for name in queue_names],
                    connection=connection, name=f"test-{uuid.uuid4().hex[:8]}")
    worker.work(burst=burst, with_scheduler=True, max_jobs=max_jobs, logging_level="WARNING")
    connection.close()
    return worker
