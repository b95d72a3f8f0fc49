"""Snakemake command lines from tests, each run in a process forked from one that has imported Snakemake already.

A Snakemake process spends about 1.2 s of a 1.8 s dry run importing Snakemake, its plugins and their dependencies
(the SLURM executor's pandas among them), and the suite starts some fifty from its tests. Here one server process
per pytest worker imports Snakemake once (nothing of this project: a project copy's jobs and Snakefile import the
copy's own code), then forks a child for each command line, which is what a fresh `python -m snakemake ARGS` would
be: its own process and process group, the command's working directory and environment (sys.path as `python -m`
makes it: the working directory in full, then the PYTHONPATH entries), stdin from /dev/null, stdout and stderr to files,
and its exit through the interpreter's own (SystemExit, atexit, flushing). The client waits with the command's
timeout and kills the child's process group when it runs out, as subprocess.run would.

Only the main thread of a worker uses the server; other threads, and every run where MOE_ADAPTERS_TEST_FORK=0,
start `python -m snakemake` as before.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER = r"""
import json, os, sys
import snakemake.api, snakemake.cli, snakemake.dag, snakemake.workflow, snakemake.scheduling.job_scheduler
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry
from snakemake_interface_storage_plugins.registry import StoragePluginRegistry
ExecutorPluginRegistry().plugins, StoragePluginRegistry().plugins  # imports every installed plugin, once
req, resp = int(sys.argv[1]), int(sys.argv[2])
base_path = list(sys.path)
buf = b""
while True:
    while b"\n" not in buf:
        chunk = os.read(req, 1 << 16)
        if not chunk:
            sys.exit(0)
        buf += chunk
    line, buf = buf.split(b"\n", 1)
    r = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.close(req)
        os.close(resp)
        os.setsid()
        os.chdir(r["cwd"])
        os.environ.clear()
        os.environ.update(r["env"])
        extra = [p for p in r["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.getcwd(), *extra, *base_path[1:]]  # as `python -m`: the working directory, in full
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, r["stdout"]), (2, r["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["snakemake", *r["args"]]
        sys.exit(snakemake.cli.main())
    os.write(resp, (json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    os.write(resp, (json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n").encode())
"""


class _Server:
    def __init__(self):
        req_r, self.req = os.pipe()
        self.resp, resp_w = os.pipe()
        # the server's own environment: no PYTHONPATH (each command's goes into its sys.path), and one BLAS thread,
        # so that pandas' numpy starts no thread pool in a process that forks
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OPENBLAS_NUM_THREADS": "1"}
        self.log = tempfile.NamedTemporaryFile(prefix="snakemake-fork-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(req_r), str(resp_w)], pass_fds=(req_r, resp_w), env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log, cwd=tempfile.gettempdir(),
        )
        os.close(req_r)
        os.close(resp_w)
        self.buf = b""
        atexit.register(self.close)

    def close(self):
        try:
            os.close(self.req)  # the server exits at EOF
        except OSError:
            pass
        self.proc.wait(timeout=30)
        Path(self.log.name).unlink(missing_ok=True)

    def _message(self, deadline: float | None) -> dict | None:
        while b"\n" not in self.buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.resp], [], [], wait)
            if not ready:
                return None
            chunk = os.read(self.resp, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the Snakemake fork server exited: {Path(self.log.name).read_text()[-3000:]}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, args, cwd, env, timeout) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {"args": [os.fspath(a) for a in args], "cwd": str(cwd), "env": dict(env),
                       "stdout": str(out), "stderr": str(err)}
            os.write(self.req, (json.dumps(request) + "\n").encode())
            pid = self._message(None)["pid"]
            done = self._message(None if timeout is None else time.monotonic() + timeout)
            if done is None:
                os.killpg(pid, signal.SIGKILL)
                self._message(None)
                raise subprocess.TimeoutExpired(
                    ["snakemake", *args], timeout, out.read_text(errors="replace"), err.read_text(errors="replace")
                )
            return subprocess.CompletedProcess(
                ["snakemake", *args], done["status"], out.read_text(errors="replace"), err.read_text(errors="replace")
            )


_server: _Server | None = None


def run_snakemake(args, *, cwd, env, timeout=None) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in `cwd` with `env`, its output captured as text (subprocess.run's result)."""
    global _server
    if os.environ.get("MOE_ADAPTERS_TEST_FORK", "1") == "0" or threading.current_thread() is not threading.main_thread():
        return subprocess.run(
            [sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
    if _server is None or _server.proc.poll() is not None:
        _server = _Server()
    return _server.run(args, cwd, env, timeout)
