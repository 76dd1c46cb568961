"""A one-node Slurm cluster on localhost for the tests, started as root in a folder of its own.

Debian 12's packages (`slurm-wlm slurmdbd munge mariadb-server`, Slurm 22.05): munged with a generated key,
a MariaDB server (its own datadir and socket) behind slurmdbd (accounting, so that `sacct` works: submitit
reads job states through it), slurmctld and slurmd. Nothing touches cgroups: proctrack/linuxproc, task/none,
jobacct_gather/none. One node with this machine's CPUs, one partition, jobs may be requeued, a requeued job
may start again after ~10 s (cred_expire), a finished job leaves squeue after MinJobAge (10 s). Every daemon
listens on a free unprivileged port of 127.0.0.1 and writes its log to `<folder>/log/`.

    reason = unavailable()          # None, or why no cluster can start here (not Linux, not root, packages)
    cluster = start(folder)         # a running cluster; cluster.env has SLURM_CONF (pass it to subprocesses)
    cluster.stop()                  # cancels every job, stops every daemon, leaves no process behind
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("mariadb", "sacctmgr", "sinfo", "sbatch", "srun", "squeue", "sacct", "scancel", "scontrol")
START_TIMEOUT_S = 180  # per step; generous for a busy 2-core machine
STOP_TIMEOUT_S = 60
CLUSTER, ACCOUNT, PARTITION = "nc-test", "nc", "debug"
DB_USER, DB_PASS, DB_NAME = "slurm", "nc-test-only", "slurm_acct_db"


def unavailable() -> str | None:
    """Why a cluster cannot start on this machine (None if it can): Linux, root and the Debian packages."""
    if not sys.platform.startswith("linux"):
        return f"a local Slurm cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "a local Slurm cluster is started as root (its daemons run as root); this is not root"
    missing = [p for p in DAEMONS + CLIENTS if shutil.which(p) is None]
    if missing:
        return (f"{', '.join(missing)} not found: apt-get install slurm-wlm slurmdbd munge mariadb-server "
                "(what .ci/run does)")
    return None


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports of 127.0.0.1 that are free now (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """The daemons of one cluster (Popen objects, each the leader of its own process group) and its files."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.log = self.folder / "log"
        self.conf = self.folder / "slurm.conf"
        # munged wants its socket's folder open to all (pytest's are 0700) and a short path (a Unix socket's limit)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="nc-munge-", dir="/tmp"))
        self.socket_dir.chmod(0o755)
        self.munge_socket = self.socket_dir / "munge.sock"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.env.pop("SLURM_JOB_ID", None)
        self.daemons: dict[str, subprocess.Popen] = {}
        self.node = socket.gethostname().split(".")[0]

    # -- helpers --------------------------------------------------------------------------------------------
    def run(self, *cmd, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A client command with the cluster's environment; RuntimeError with its output if it fails."""
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout}{out.stderr}")
        return out

    def _daemon(self, name: str, *argv) -> None:
        with open(self.log / f"{name}.out", "ab") as log:
            self.daemons[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, cwd=self.folder, start_new_session=True)

    def _tail(self, name: str) -> str:
        texts = []
        for path in sorted(self.log.glob(f"{name}*")):
            with contextlib.suppress(OSError):
                texts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(texts)

    def _wait_for(self, name: str, ready, what: str) -> None:
        """Poll ready() until true; RuntimeError with the daemon's log if it exits or START_TIMEOUT_S passes."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                if ready():
                    return
            proc = self.daemons.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) before {what}:\n{self._tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no {what} after {START_TIMEOUT_S} s:\n{self._tail(name)}")
            time.sleep(0.2)

    def _ok(self, *cmd) -> bool:
        return self.run(*cmd, check=False, timeout=30).returncode == 0

    # -- start ----------------------------------------------------------------------------------------------
    def start(self) -> Cluster:
        self.log.mkdir(parents=True, exist_ok=True)
        db_port, dbd_port, ctld_port, slurmd_port = free_ports(4)
        self._start_munge()
        self._start_mariadb(db_port)
        self._write_confs(db_port, dbd_port, ctld_port, slurmd_port)
        self._daemon("slurmdbd", "slurmdbd", "-D")
        self._wait_for("slurmdbd", lambda: self._ok("sacctmgr", "-n", "list", "cluster"), "answer to sacctmgr")
        for what in (("cluster", CLUSTER), ("account", ACCOUNT, f"Cluster={CLUSTER}"),
                     ("user", "root", f"Account={ACCOUNT}", f"Cluster={CLUSTER}")):
            self.run("sacctmgr", "-i", "add", *what)
        self._daemon("slurmctld", "slurmctld", "-D", "-i")
        self._wait_for("slurmctld", lambda: self._ok("scontrol", "ping"), "answer to scontrol ping")
        self._daemon("slurmd", "slurmd", "-D", "-N", self.node)
        self._wait_for("slurmd", lambda: "idle" in self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout,
                       "idle node in sinfo")
        self._wait_for("slurmctld", lambda: self._ok("sacct", "-n", "-X"), "answer to sacct")
        return self

    def _start_munge(self) -> None:
        key = self.folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._daemon("munged", "munged", "-F", f"--key-file={key}", f"--socket={self.munge_socket}",
                     f"--pid-file={self.folder / 'munged.pid'}", f"--seed-file={self.folder / 'munged.seed'}",
                     f"--log-file={self.log / 'munged.log'}")
        self._wait_for("munged", lambda: self._ok("munge", "-n", "-S", str(self.munge_socket)), "munge credential")

    def _start_mariadb(self, port: int) -> None:
        datadir, sock = self.folder / "db", self.socket_dir / "mysql.sock"
        fast = ["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]  # a throw-away database
        out = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root",
                              "--auth-root-authentication-method=socket", "--skip-test-db", "--skip-name-resolve",
                              *fast], env=self.env, capture_output=True, text=True, cwd=self.folder,
                             timeout=START_TIMEOUT_S)
        (self.log / "mariadb-install-db.out").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f"mariadb-install-db exited {out.returncode}:\n{self._tail('mariadb-install-db')}")
        self._daemon("mariadbd", "mariadbd", "--no-defaults", f"--datadir={datadir}", f"--socket={sock}",
                     f"--port={port}", "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
                     f"--pid-file={self.folder / 'mariadbd.pid'}", f"--log-error={self.log / 'mariadbd.err'}",
                     "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900", *fast)
        sql = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e"]
        self._wait_for("mariadbd", lambda: self._ok(*sql, "SELECT 1"), "answer to SELECT 1")
        self.run(*sql, f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASS}'; "
                       f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';")

    def _write_confs(self, db_port: int, dbd_port: int, ctld_port: int, slurmd_port: int) -> None:
        f, log = self.folder, self.log
        for sub in ("state", "spool"):
            (f / sub).mkdir(exist_ok=True)
        dbd = self.folder / "slurmdbd.conf"  # slurmdbd finds it beside SLURM_CONF; it must be 0600, root's
        dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
LogFile={log / 'slurmdbd.log'}
PidFile={f / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser={DB_USER}
StoragePass={DB_PASS}
StorageLoc={DB_NAME}
""")
        dbd.chmod(0o600)
        hw = self.run("slurmd", "-C").stdout.splitlines()[0].split()  # NodeName=... CPUs=2 ... RealMemory=...
        node = " ".join(w for w in hw[1:] if w.split("=")[0] in ("CPUs", "Boards", "SocketsPerBoard",
                                                                  "CoresPerSocket", "ThreadsPerCore", "RealMemory"))
        # AccountingStoragePass: the munge socket of messages to slurmdbd (AuthInfo's is not used for them)
        self.conf.write_text(f"""ClusterName={CLUSTER}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={log / 'slurmctld.log'}
SlurmdLogFile={log / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd_port}
AccountingStoragePass={self.munge_socket}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=10
KillWait=5
JobRequeue=1
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    # -- stop -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, stop the daemons (SIGTERM, then SIGKILL of their process groups), then SIGKILL any
        process left that carries this cluster's SLURM_CONF (slurmstepd, job steps); RuntimeError if one stays."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run("scancel", "--user=root", check=False, timeout=30)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while self.run("squeue", "-h", check=False, timeout=30).stdout.strip():
                    if time.monotonic() > deadline:
                        self.run("scancel", "--user=root", "--full", "--signal=KILL", check=False, timeout=30)
                        break
                    time.sleep(0.5)
        for name in reversed(list(self.daemons)):
            proc = self.daemons[name]
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the daemon left in its group
            proc.wait()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while left := self.processes():
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of the test cluster outlived it: {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def processes(self) -> list[int]:
        """Live processes (not this one, not zombies) whose environment has this cluster's SLURM_CONF."""
        marker, found = f"SLURM_CONF={self.conf}".encode(), []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                state = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
                if int(proc.name) == os.getpid() or state in ("Z", "X"):
                    continue
                if marker in proc.joinpath("environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
        return found


def start(folder) -> Cluster:
    """A running cluster in `folder` (created); on any failure its daemons are stopped and RuntimeError raised."""
    cluster = Cluster(folder)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
