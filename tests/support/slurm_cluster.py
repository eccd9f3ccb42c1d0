"""A throwaway single-node SLURM cluster on localhost, for testing the SLURM profile.

Debian's ``munge slurmctld slurmd slurm-client`` packages run without systemd:
``munged`` (as user munge), ``slurmctld`` and ``slurmd`` are started directly from
``/etc/slurm/slurm.conf`` written here, and stopped again by the PIDs in their PID
files (never by process name). There is no accounting database, so ``sacct`` does
not work: clients must query job states with ``squeue`` (``MinJobAge=300`` keeps
finished jobs visible to it for five minutes).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
DAEMONS = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd", "munged": "/usr/sbin/munged"}
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
PID_FILES = {
    "slurmd": Path("/run/slurmd.pid"),
    "slurmctld": Path("/run/slurmctld.pid"),
    "munged": Path("/run/munge/munged.pid"),
}
PARTITION = "debug"
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")


def installed() -> bool:
    """Whether the SLURM client tools and all three daemons are present."""
    return all(shutil.which(tool) for tool in ("sbatch", "squeue", "sinfo")) and all(
        Path(path).exists() for path in DAEMONS.values()
    )


def install() -> str | None:
    """Install the Debian packages when missing; return why that is impossible, or None."""
    if os.geteuid() != 0:
        return "starting a SLURM cluster needs root (daemons, /etc/slurm, /run)"
    if installed():
        return None
    if not shutil.which("apt-get"):
        return "sbatch is not installed and apt-get is not available to install SLURM"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        try:
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return f"{' '.join(cmd)} timed out"
        if result.returncode != 0:
            return f"{' '.join(cmd)} failed: {(result.stdout + result.stderr)[-500:]}"
    return None if installed() else f"installing {' '.join(PACKAGES)} did not provide sbatch and the daemons"


def alive(pid_file: Path) -> int | None:
    """The PID in ``pid_file`` when that process is running, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def slurm_conf(host: str, cpus: int, memory_mb: int) -> str:
    return "\n".join(
        [
            "ClusterName=wsiseg-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=slurm",
            "AuthType=auth/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=300",
            "StateSaveLocation=/var/spool/slurmctld",
            "SlurmdSpoolDir=/var/spool/slurmd",
            f"SlurmctldPidFile={PID_FILES['slurmctld']}",
            f"SlurmdPidFile={PID_FILES['slurmd']}",
            f"SlurmctldLogFile={SLURMCTLD_LOG}",
            "SlurmdLogFile=/var/log/slurm/slurmd.log",
            "SlurmctldDebug=info",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


class SlurmCluster:
    """munged + slurmctld + slurmd for one node named after this host, at 127.0.0.1."""

    def __init__(self, cpus: int = 2, memory_mb: int = 20000):
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.started: list[str] = []
        self.backup: str | None = None
        self.log_offset = 0

    def start(self, timeout: float = 60) -> None:
        """Start the daemons and wait until the node is idle; raise RuntimeError on failure."""
        for name in ("slurmctld", "slurmd"):
            if alive(PID_FILES[name]):
                raise RuntimeError(f"{name} is already running (PID file {PID_FILES[name]}); not touching it")
        if SLURM_CONF.exists():
            self.backup = SLURM_CONF.read_text()
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(slurm_conf(self.host, self.cpus, self.memory_mb))
        for path in (Path("/var/spool/slurmctld"), Path("/var/spool/slurmd"), SLURMCTLD_LOG.parent):
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, "slurm", "slurm")
        self.log_offset = SLURMCTLD_LOG.stat().st_size if SLURMCTLD_LOG.exists() else 0
        self._start_munge()
        for name in ("slurmctld", "slurmd"):
            run([DAEMONS[name]])
            self.started.append(name)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                return
            time.sleep(1)
        raise RuntimeError(f"the SLURM node did not become idle within {timeout:.0f} s (sinfo: {state!r})")

    def _start_munge(self) -> None:
        if alive(PID_FILES["munged"]):
            return  # someone else's munged: use it, leave it running
        if not MUNGE_KEY.exists():
            run(["mungekey", "-c", "-f", "-k", str(MUNGE_KEY)])
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
        for path in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, "munge", "munge")
        run(["runuser", "-u", "munge", "--", DAEMONS["munged"]])
        self.started.append("munged")

    def stop(self) -> None:
        """Stop the daemons this object started, by PID file, and restore slurm.conf (or remove
        the one it wrote)."""
        for name in ("slurmd", "slurmctld", "munged"):
            if name not in self.started:
                continue
            pid = alive(PID_FILES[name])
            if pid:
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    if not alive(PID_FILES[name]):
                        break
                    time.sleep(0.2)
        self.started.clear()
        if self.backup is not None:
            SLURM_CONF.write_text(self.backup)
        elif SLURM_CONF.exists() and self.host in SLURM_CONF.read_text():
            # the file this object wrote: without it, SLURM's client tools (which the slurm
            # executor plugin runs whenever snakemake starts) fail at once instead of waiting
            # ~9 s for the stopped controller
            SLURM_CONF.unlink()

    def controller_log(self) -> str:
        """What slurmctld logged since this cluster was started."""
        with open(SLURMCTLD_LOG, errors="replace") as log:
            log.seek(self.log_offset)
            return log.read()


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
