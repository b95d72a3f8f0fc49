"""A real single-node SLURM (Debian's slurm-wlm and munge) for tests: started in a temporary folder, stopped after.

Everything the daemons write lives in one temporary folder: slurm.conf (SLURM_CONF points to it),
gres.conf, the munge key, munge's socket, seed, log and pid files, slurmctld's state, slurmd's spool,
both daemons' logs, and bin/, scripts that give every SLURM client this slurm.conf. Nothing goes to /etc,
/run, /var/spool or /var/log, and the daemons listen on free ports picked at start, so a system SLURM or
munge on the machine is neither used nor disturbed. The node is this machine as `slurmd -C` sees it
(hostname, CPUs, memory; or more CPUs than it has, for jobs that mostly wait), with 0 to 4 pretend GPUs, in one
partition `test`, with no accounting (job status from squeue only).

    from .slurm_cluster import slurm  # a module-scoped pytest fixture: a SlurmCluster with 1 pretend GPU

    def test_x(slurm):
        slurm.run(["sbatch", "--wrap", "true"])   # or subprocess with env=slurm.env

Where the packages are missing, `slurm_skip_reason()` installs them with apt-get only when
MOE_ADAPTERS_INSTALL_SLURM=1 (CI sets it) and otherwise names the reason to skip; the fixture skips
with that reason and never fails for it. The daemons must run as root (slurmd starts jobs as their
users); elsewhere the fixture skips too. Once the packages are there, a cluster that does not come up
is an error, with the daemons' logs in the message.

Only the installation touches fixed system paths: apt-get itself, and, during it, /usr/sbin/policy-rc.d
(created only where there is none, removed right after) so that the packages' scripts start no system
munge, slurmctld or slurmd. The package also writes /etc/munge/munge.key; this helper never reads it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_ENV = "MOE_ADAPTERS_INSTALL_SLURM"
PACKAGES = ("slurm-wlm", "munge")
# the programs the harness runs; slurm-wlm brings slurmctld, slurmd and slurm-client (sbatch, squeue, ...)
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo", "salloc", "sacct")
# MinJobAge: finished jobs stay visible to squeue this long. Without accounting, the executor plugin's
# squeue status command needs it at least 3 x its initial status-check interval, or it falls back to sacct.
MIN_JOB_AGE = 600
_POLICY_RC = Path("/usr/sbin/policy-rc.d")


class SlurmStartError(RuntimeError):
    pass


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def _install_packages() -> str | None:
    """apt-get install the packages; None on success, else why not. No system daemon is left started."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    created_policy = False
    try:
        if not _POLICY_RC.exists():
            # invoke-rc.d asks this script whether the packages' postinst may start their services:
            # 101 = no. Removed again below, so the machine keeps its own policy.
            _POLICY_RC.write_text("#!/bin/sh\n# temporary, tests/slurm_cluster.py\nexit 101\n")
            _POLICY_RC.chmod(0o755)
            created_policy = True
        steps = (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        )
        for cmd in steps:  # a failed update is not fatal: the package lists may already be there
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0 and cmd[1] == "install":
                tail = (r.stdout + r.stderr).strip().splitlines()[-5:]
                return f"`{' '.join(cmd)}` failed ({r.returncode}): " + " | ".join(tail)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"installing {' '.join(PACKAGES)} failed: {e}"
    finally:
        if created_policy:
            _POLICY_RC.unlink(missing_ok=True)
    return None


def slurm_skip_reason() -> str | None:
    """None where a cluster can be started here; otherwise why a test needing one is skipped."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "a SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "starting slurmd needs root (the test harness runs SLURM's daemons itself)"
    missing = missing_programs()
    if not missing:
        return None
    if os.environ.get(INSTALL_ENV) != "1":
        return (
            f"SLURM is not installed (missing {', '.join(missing)}); install Debian's "
            f"{' and '.join(PACKAGES)}, or set {INSTALL_ENV}=1 to let the test apt-get install them"
        )
    why = _install_packages()
    if why:
        return f"SLURM could not be installed: {why}"
    missing = missing_programs()
    if missing:
        return f"after installing {' '.join(PACKAGES)}, still missing: {', '.join(missing)}"
    return None


def _free_ports(n: int) -> list[int]:
    """n distinct ports free now (all held open until all are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def node_description() -> dict[str, str]:
    """The node as slurmd sees it (`slurmd -C`): NodeName (the hostname), CPUs, topology, RealMemory."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=60).stdout
    first = out.strip().splitlines()[0]  # the second line is UpTime=...
    return dict(kv.split("=", 1) for kv in first.split())


@dataclass
class SlurmCluster:
    """A running single-node cluster. `env`, for every SLURM client call and every Snakemake run against it:
    os.environ with SLURM_CONF and the client scripts first in PATH, without an outer job's SLURM_* vars."""

    root: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int
    gpus: int
    env: dict[str, str]
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def run(
        self, cmd: list[str], check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, check=check, timeout=timeout, **kw
        )

    def node_state(self) -> str:
        r = self.run(["sinfo", "--noheader", "--Node", "--format=%T"], check=False, timeout=20)
        return r.stdout.strip() if r.returncode == 0 else f"(sinfo failed: {r.stderr.strip()})"

    def active_jobs(self) -> list[str]:
        r = self.run(
            [
                "squeue",
                "--noheader",
                "--format=%i",
                "--states=PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING",
            ],
            check=False,
            timeout=20,
        )
        return r.stdout.split()

    def job_ids(self) -> list[str]:
        """Every job the controller still knows (finished ones for MinJobAge seconds)."""
        r = self.run(["squeue", "--noheader", "--states=all", "--format=%i"], timeout=20)
        return r.stdout.split()

    def logs(self, lines: int = 25) -> str:
        """The tails of the daemons' logs, and of the console output of any daemon that exited."""
        parts = []
        exited = [self.root / "log" / f"{n}.out" for n, p in self._procs.items() if p.poll() is not None]
        for log in sorted((self.root / "log").glob("*.log")) + exited:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)


# Character devices that stand in for GPUs: each pretend GPU needs a distinct device file (gres.conf File=).
PRETEND_GPU_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")


def _write_config(root: Path, node: dict[str, str], gpus: int, munge_socket: Path, cpus: int | None = None) -> Path:
    (root / "plugstack.conf").write_text("")  # not /etc/slurm/plugstack.conf: no SPANK plugin loads
    gres = ""
    if gpus:
        # Pretend GPUs: SLURM schedules them as a GRES (sbatch --gpus=1 is accepted, counted, and the job gets
        # CUDA_VISIBLE_DEVICES) backed by character devices such as /dev/null, so jobs that ask for a GPU run, and
        # compute on the CPU. (Count=1 without File= leaves the node unregistered in SLURM 22.05.)
        (root / "gres.conf").write_text(
            "".join(f"NodeName={node['NodeName']} Name=gpu File={dev}\n" for dev in PRETEND_GPU_DEVICES[:gpus])
        )
        gres = f" Gres=gpu:{gpus}"
    overrides = ""
    if cpus is not None and cpus != int(node["CPUs"]):
        # More CPUs than the machine has (jobs that mostly wait, such as a workflow's, then overlap): slurmd
        # takes the configured node as it is (config_overrides) instead of draining it for a count mismatch.
        node = {"NodeName": node["NodeName"], "CPUs": str(cpus), "RealMemory": node["RealMemory"]}
        overrides = "SlurmdParameters=config_overrides\n"
    topology = " ".join(
        f"{k}={node[k]}"
        for k in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        if k in node
    )
    ctld_port, slurmd_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(
        f"""# written by tests/slurm_cluster.py; everything below lives in {root}
ClusterName=moetest
SlurmctldHost={node["NodeName"]}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
GresTypes=gpu
{overrides}NodeName={node["NodeName"]} CPUs={node["CPUs"]} {topology} RealMemory={node["RealMemory"]}{gres} State=UNKNOWN
PartitionName=test Nodes={node["NodeName"]} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _client_shims(root: Path, conf: Path) -> Path:
    """`root/bin` with one script per SLURM client command that runs the real one with SLURM_CONF set.

    A cluster's clients normally find /etc/slurm/slurm.conf; this one's config lives elsewhere, and SLURM_CONF
    does not reach every client: inside a job, Snakemake's jobstep plugin starts the rule with srun in an
    environment stripped of SLURM_* variables, SLURM_CONF among them. First in PATH, these scripts stand in
    for the system config path without writing to it.
    """
    bin_dir = root / "bin"
    for name in CLIENTS:
        real = shutil.which(name)
        if real:
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nSLURM_CONF={shlex.quote(str(conf))} exec {shlex.quote(real)} "$@"\n')
            shim.chmod(0o755)
    return bin_dir


def _start(name: str, cmd: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen:
    out = open(root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (closed with the process)
    try:
        # own session: a signal to the test runner's group never reaches the daemons, and stop() finds them
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _wait_for(
    what: str, ok, cluster: SlurmCluster, timeout: float, procs: dict[str, subprocess.Popen]
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, p in procs.items():
            if p.poll() is not None:
                raise SlurmStartError(
                    f"{name} exited with {p.returncode} while waiting for {what}\n{cluster.logs()}"
                )
        if ok():
            return
        if time.monotonic() > deadline:
            raise SlurmStartError(f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.logs()}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_cluster(
    base: Path | None = None, gpus: int = 0, timeout: float = 90, cpus: int | None = None
) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd in a fresh folder under `base` (default: the system temp folder);
    yield once the node is idle; on exit cancel every job, stop the daemons and delete the folder.
    `gpus` pretend GPUs (0 to 4); `cpus`: the node's CPU count if not the machine's own."""
    if not 0 <= gpus <= len(PRETEND_GPU_DEVICES):
        raise ValueError(f"the harness offers 0 to {len(PRETEND_GPU_DEVICES)} (pretend) GPUs")
    # a short path: munge's socket path must stay under the 108 bytes of a Unix socket address
    root = Path(tempfile.mkdtemp(prefix="moe-slurm-", dir=base))
    procs: dict[str, subprocess.Popen] = {}
    cluster = None
    try:
        for d in ("munge", "state", "spool", "run", "log", "bin"):
            (root / d).mkdir(mode=0o700)
        node = node_description()
        munge = root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = munge / "munge.socket.2"
        conf = _write_config(root, node, gpus, sock, cpus)
        env = dict(os.environ, SLURM_CONF=str(conf), PATH=f"{_client_shims(root, conf)}:{os.environ['PATH']}")
        for var in [v for v in env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
            del env[var]  # a job context (SLURM_JOB_ID, ...) of an outer SLURM would confuse the clients
        cluster = SlurmCluster(
            root, conf, node["NodeName"], cpus or int(node["CPUs"]), int(node["RealMemory"]), gpus, env, procs
        )

        procs["munged"] = _start(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={munge}/munged.pid",
                f"--log-file={root}/log/munged.log",
                f"--seed-file={munge}/munged.seed",
            ],
            root,
            env,
        )
        _wait_for("munged's socket", sock.exists, cluster, 20, procs)
        procs["slurmctld"] = _start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)], root, env)
        _wait_for(
            "slurmctld to answer",
            lambda: cluster.run(["scontrol", "ping"], check=False, timeout=20).stdout.count("UP") > 0,
            cluster,
            timeout,
            procs,
        )
        procs["slurmd"] = _start("slurmd", ["slurmd", "-D", "-f", str(conf)], root, env)
        _wait_for(
            f"node {cluster.node} to be idle",
            lambda: cluster.node_state() == "idle",
            cluster,
            timeout,
            procs,
        )
        yield cluster
    finally:
        if cluster is not None and procs.get("slurmctld") and procs["slurmctld"].poll() is None:
            # cancel what is left, and let slurmd end the jobs' slurmstepd before the daemons go
            cluster.run(["scancel", "--quiet", f"--user={getpass.getuser()}"], check=False, timeout=30)
            deadline = time.monotonic() + 30
            while cluster.active_jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in procs:
                _stop(procs[name])
        _end_steps(root / "slurm.conf")
        shutil.rmtree(root, ignore_errors=True)


def _steps_of(conf: Path) -> list[int]:
    """Live slurmstepd processes (slurmd's per-job helpers, detached from it) of this cluster: they
    inherit slurmd's environment, whose SLURM_CONF names this cluster's slurm.conf."""
    mark = f"SLURM_CONF={conf}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if (p / "comm").read_text().strip() == "slurmstepd" and mark in (
                    p / "environ"
                ).read_bytes().split(b"\0"):
                    pids.append(int(p.name))
    return pids


def _end_steps(conf: Path, timeout: float = 15) -> None:
    """slurmstepd finishes a job's bookkeeping a moment after the job; wait for that, then kill stragglers."""
    deadline = time.monotonic() + timeout
    while _steps_of(conf) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _steps_of(conf):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cluster_or_skip(**kw) -> Iterator[SlurmCluster]:
    """For a fixture: a running cluster (running_cluster's arguments), or a skip with the reason none can run."""
    reason = slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    with running_cluster(**kw) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    """A running single-node SLURM for the module's tests; skipped (with the reason) where none can run."""
    yield from cluster_or_skip(gpus=1)
