"""A real one-node SLURM for the tests: Debian's ``slurmctld``, ``slurmd`` and ``munge``,
started in a temporary folder with their own ports, as root (``.ci/run`` installs them).

The node offers this machine's CPUs and one GPU whose device file is ``/dev/null`` (Slurm
22.05 drops a GPU without a file), so GPU requests are accepted on a CPU-only machine.
``AuthInfo=cred_expire=10`` and ``KillWait=3`` keep requeues quick. Accounting is kept as
on a real cluster: ``slurmdbd`` on a MariaDB server of the cluster's own (a data folder
beside it, its own port), so ``sacct`` answers for ended jobs, as submitit and embedkit
ask it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacctmgr")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def missing() -> str | None:
    """Why a cluster cannot start here (None: it can)."""
    absent = [d for d in DAEMONS if not (shutil.which(d) or Path(f"/usr/sbin/{d}").exists())]
    if absent:
        return (
            f"no {', '.join(absent)} (Debian: apt-get install slurmctld slurmd slurmdbd "
            "slurm-client munge mariadb-server)"
        )
    if os.geteuid() != 0:
        return "starting slurmctld and slurmd takes root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_answers() -> bool:
    return subprocess.run(
        ["munge", "-n"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
    ).returncode == 0  # fmt: skip


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({e.strerror})"


def _start_munge() -> None:
    """A munged that answers. A socket left by one that has gone (a machine whose /run
    outlived its processes) is removed first: its existence alone proves nothing."""
    if _munge_answers():
        return
    for leftover in ("munge.socket.2", "munge.socket.2.lock", "munged.pid"):
        (MUNGE_SOCKET.parent / leftover).unlink(missing_ok=True)
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=False, timeout=30)
    if not _munge_answers():  # e.g. a log file left owned by root: run it as root
        subprocess.run(["/usr/sbin/munged", "--force"], check=False, timeout=30)
    if not _munge_answers():
        raise RuntimeError(
            "munged does not answer; /var/log/munge/munged.log ends:\n"
            + _tail(Path("/var/log/munge/munged.log"))
        )


def _wait_for_port(port: int, name: str, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} does not listen on port {port}; its log ends:\n{_tail(log)}")


class Cluster:
    """A running one-node cluster; ``env`` is what a process needs to use it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.host = socket.gethostname().split(".")[0]
        self.env = {"SLURM_CONF": str(folder / "slurm.conf")}
        self.database: subprocess.Popen | None = None

    def run(self, *command: str, check: bool = True) -> str:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **self.env},
        )  # fmt: skip
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    def _start_accounting(self, dbd_port: int) -> None:
        """MariaDB in ``folder/db`` on a free port, then slurmdbd on it (its config beside
        slurm.conf, where slurmdbd looks), and this cluster registered."""
        data, db_port = self.folder / "db", _free_port()
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        log = open(self.folder / "log" / "mariadb.log", "w")  # noqa: SIM115
        self.database = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
             f"--socket={data}/mysqld.sock", f"--port={db_port}", "--bind-address=127.0.0.1",
             f"--pid-file={data}/mariadb.pid", "--innodb-buffer-pool-size=64M"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        _wait_for_port(db_port, "mariadbd", self.folder / "log" / "mariadb.log")
        conf = self.folder / "slurmdbd.conf"
        conf.write_text(
            f"AuthType=auth/munge\nDbdHost={self.host}\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\n"
            f"SlurmUser=root\nLogFile={self.folder / 'log' / 'slurmdbd.log'}\n"
            f"PidFile={self.folder / 'slurmdbd.pid'}\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={db_port}\nStorageUser=root\nStorageLoc=slurm_acct_db\n"
        )
        conf.chmod(0o600)  # slurmdbd refuses a config others can read
        self.run("/usr/sbin/slurmdbd")
        _wait_for_port(dbd_port, "slurmdbd", self.folder / "log" / "slurmdbd.log")
        self.run("sacctmgr", "-i", "add", "cluster", "embedkit-tests")

    def start(self) -> Cluster:
        for sub in ("state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 8 // 10
        dbd_port = _free_port()
        lines = {
            "ClusterName": "embedkit-tests",
            "SlurmctldHost": self.host,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": "cred_expire=10",
            "StateSaveLocation": self.folder / "state",
            "SlurmdSpoolDir": self.folder / "spool",
            "SlurmctldPidFile": self.folder / "slurmctld.pid",
            "SlurmdPidFile": self.folder / "slurmd.pid",
            "SlurmctldLogFile": self.folder / "log" / "slurmctld.log",
            "SlurmdLogFile": self.folder / "log" / "slurmd.log",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "ReturnToService": 2,
            "MpiDefault": "none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/slurmdbd",
            "AccountingStorageHost": "127.0.0.1",
            "AccountingStoragePort": dbd_port,
            "GresTypes": "gpu",
            "MinJobAge": 300,
            "SchedulerParameters": "sched_interval=5",  # a requeued task starts in seconds
            "KillWait": 3,  # submitit ignores SIGTERM: SIGKILL 3 s later, not 30
            "NodeName": f"{self.host} CPUs={os.cpu_count()} RealMemory={memory} Gres=gpu:1",
            "PartitionName": "debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        }
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        (self.folder / "slurm.conf").write_text(text)
        (self.folder / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.host} Name=gpu File=/dev/null\n"
        )
        _start_munge()
        self._start_accounting(dbd_port)
        self.run("/usr/sbin/slurmctld", "-i")
        self.run("/usr/sbin/slurmd")
        deadline = time.time() + 90  # a loaded machine: 2-3 s when idle
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).strip()
            if state == "idle":
                return self
            if state.startswith(("drain", "inval")):
                self.run("scontrol", "update", f"nodename={self.host}", "state=idle", check=False)
            time.sleep(0.5)
        logs = "\n".join(
            f"{name} ends:\n{_tail(self.folder / 'log' / name)}"
            for name in ("slurmctld.log", "slurmd.log", "slurmdbd.log")
        )
        raise RuntimeError(f"the node did not come up: sinfo says '{state}'\n{logs}")

    def stop(self) -> None:
        for name in ("slurmd.pid", "slurmctld.pid", "slurmdbd.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.folder / name).read_text()), signal.SIGTERM)
        if self.database is not None:
            self.database.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.database.wait(timeout=30)

    def wait_idle(self, timeout: float = 300) -> None:
        """Until the queue is empty."""
        deadline = time.time() + timeout
        while self.run("squeue", "-h", check=False).strip():
            if time.time() > deadline:
                raise TimeoutError(self.run("squeue", check=False))
            time.sleep(1)
