"""A real PostgreSQL server for tests: ``initdb`` into a temporary directory, ``pg_ctl start`` on a free
loopback port (``pg_ctl -w`` waits until the server accepts connections), password (SCRAM) logins over
TCP, one role for the tests, a database per use, and ``pg_ctl stop`` + removal afterwards.

PostgreSQL refuses to run as root: as root the server runs as the unprivileged ``postgres`` user (the
distribution's ``postgresql`` package creates it; ``scripts/test`` installs that package when
``initdb`` is missing) through ``runuser``. The binaries are found on PATH or in
``/usr/lib/postgresql/<version>/bin`` (Debian keeps them there).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import _free_port

ROLE = "mlioc"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine."""


def pg_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    root: Path
    bindir: Path
    port: int
    superuser_password: str
    password: str  # of ROLE
    run_as: list[str]
    setup_s: float = 0.0
    databases: list[str] = field(default_factory=list)

    def url(self, database: str, *, driver: str = "postgresql") -> str:
        return f"{driver}://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin(self):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password=self.superuser_password,
                               dbname="postgres", connect_timeout=10, autocommit=True)

    def sql(self, statement: str, **names) -> None:
        """One statement as the superuser; ``{name}`` fields are quoted as identifiers, ``{lit_*}`` as literals
        (DDL takes no bound parameters)."""
        from psycopg import sql

        parts = {k: (sql.Literal(v) if k.startswith("lit_") else sql.Identifier(v)) for k, v in names.items()}
        with self._admin() as conn:
            conn.execute(sql.SQL(statement).format(**parts))

    def create_database(self, name: str) -> str:
        """A fresh database owned by the test role; returns its URL (with the role's password)."""
        self.sql("CREATE DATABASE {db} OWNER {role}", db=name, role=ROLE)
        self.databases.append(name)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast",
                        "-w", "-t", "30", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")


def start_postgres() -> PostgresServer:
    """Initialise and start a throw-away server; :attr:`PostgresServer.setup_s` is how long that took."""
    t0 = time.perf_counter()
    bindir = pg_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL is not installed (no initdb): scripts/test installs the "
                                  "distribution's postgresql package")
    root = Path(tempfile.mkdtemp(prefix="mlioc-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable("running as root needs the unprivileged 'postgres' user to run the server "
                                      "(the postgresql package creates it)") from None
        os.chown(root, pg.pw_uid, pg.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    os.chmod(root, 0o700)
    superuser_password, password = secrets.token_hex(12), secrets.token_hex(12)
    pwfile = root / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    if run_as:
        os.chown(pwfile, pg.pw_uid, pg.pw_gid)
    try:
        _run([*run_as, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--pwfile", str(pwfile),
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
              "--no-instructions"], "initdb")
        pwfile.unlink()
        port = _free_port()
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=60")
        # -w: pg_ctl returns once the server accepts connections (its own readiness check), or fails.
        _run([*run_as, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-o",
              options, "-w", "-t", "60", "start"], "pg_ctl start")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server = PostgresServer(root, bindir, port, superuser_password, password, run_as)
    try:
        server.sql("CREATE ROLE {role} LOGIN PASSWORD {lit_pw}", role=ROLE, lit_pw=password)
    except BaseException:
        server.stop()
        raise
    server.setup_s = time.perf_counter() - t0
    return server
