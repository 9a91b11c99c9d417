"""Flower's deployment engine: an app directory for ``flwr run``, and a local federation.

:func:`write_flower_app` writes a Flower app (``pyproject.toml`` plus a two-line module
naming :data:`fl.flower.engine.server_app` / ``client_app``) whose run config carries a
resolved ``fl`` config. Then, with a SuperLink and one SuperNode per client::

    flower-superlink --insecure --port 9100 --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:9100 --port 9101 --node-config "partition-id=0"
    flower-supernode --insecure --superlink 127.0.0.1:9100 --port 9102 --node-config "partition-id=1"
    flwr run APP_DIR local --stream      # "local" = a SuperLink connection in $FLWR_HOME/config.toml

:class:`LocalFederation` does exactly that on loopback (free ports, its own ``FLWR_HOME``),
for tests and demos; every process it starts runs in its own session and is stopped by id.

    >>> import tempfile
    >>> from fl.config import resolve_config
    >>> cfg = resolve_config(algorithm="fedavg", sets=["rounds=2", "sim.clients=2",
    ...                                                   "sim.clients_per_round=0"])
    >>> app = write_flower_app(tempfile.mkdtemp(), cfg, out_dir="/tmp/fl-flower-run")
    >>> sorted(p.name for p in app.iterdir())
    ['fl_flower_app.py', 'pyproject.toml']
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import RunConfig, build_config

__all__ = ["write_flower_app", "LocalFederation", "free_port"]

_MODULE = '''"""Flower app components for fl (written by fl.flower.write_flower_app)."""

__all__ = ["server_app", "client_app"]

def __getattr__(name):
    # built on first use: a ClientApp process never imports the server half (nor torch, to answer
    # the server's roll call)
    if name == "server_app":
        from fl.flower.engine import make_server_app

        return make_server_app()
    if name == "client_app":
        from fl.flower.client import make_client_app

        return make_client_app()
    raise AttributeError(name)
'''


def _toml_str(s: str) -> str:
    return json.dumps(s)      # a JSON string literal is a valid TOML basic string


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _toml_str(v) if isinstance(v, str) else repr(v)


def write_flower_app(path: str | os.PathLike, config: RunConfig | Mapping[str, Any], *,
                     out_dir: str | os.PathLike | None = None, data_dir: str | None = None,
                     wait_s: float = 120.0, round_timeout: float = 0.0, strict: bool = False) -> Path:
    """Write a Flower app directory running ``config`` (``out_dir`` is made absolute: the
    ServerApp runs in another process and directory)."""
    if not isinstance(config, RunConfig):
        config = build_config(config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out = str(Path(out_dir).resolve()) if out_dir is not None else ""
    run_config = {"fl-config": json.dumps(config.to_dict(), sort_keys=True), "fl-out": out,
                  "fl-data-dir": data_dir or "", "fl-wait-s": float(wait_s),
                  "fl-round-timeout": float(round_timeout), "fl-strict": bool(strict)}
    lines = ["[project]", 'name = "fl-flower-app"', 'version = "0.1.0"',
             f'description = {_toml_str(f"fl {config.algorithm} on Flower")}',
             'license = "Apache-2.0"', "dependencies = []", "",
             "[tool.flwr.app]", 'publisher = "sparsecodec"', "",
             "[tool.flwr.app.components]", 'serverapp = "fl_flower_app:server_app"',
             'clientapp = "fl_flower_app:client_app"', "", "[tool.flwr.app.config]"]
    lines += [f'"{k}" = {_toml_value(v)}' for k, v in run_config.items()]
    (path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    (path / "fl_flower_app.py").write_text(_MODULE)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (install the extra: pip install 'sparsecodec[flower]')")
    return found


class LocalFederation:
    """A SuperLink and ``n`` SuperNodes on loopback (insecure), as a context manager.

    ``node_configs[i]`` is SuperNode i's ``--node-config`` (default ``partition-id=i``).
    :meth:`run` submits an app with ``flwr run`` and waits for ``done`` (a file the run
    writes) or the process to end. Logs go to ``workdir/*.log``.
    """

    def __init__(self, n: int, *, workdir: str | os.PathLike | None = None,
                 node_configs: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
        self.n = int(n)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fl-flower-"))
        self.node_configs = list(node_configs or [f"partition-id={i} num-partitions={n}" for i in range(n)])
        self.env = {**os.environ, **(env or {}), "FLWR_HOME": str(self.workdir / "flwr-home")}
        # fl runs from the checkout (it is not installed): the processes, started elsewhere, get its path
        checkout = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, self.env.get("PYTHONPATH", "")) if p)
        # the SuperLink / SuperNodes start flower-superexec etc. by name: the venv's bin first
        self.env["PATH"] = os.pathsep.join([str(Path(_bin("flower-superlink")).parent),
                                            self.env.get("PATH", "")])
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                             cwd=self.workdir, start_new_session=True)
        self.procs.append(p)
        return p

    def __enter__(self) -> "LocalFederation":
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
            'insecure = true\n')
        try:
            self._start("superlink", [_bin("flower-superlink"), "--insecure", "--port", str(self.port),
                                      "--disable-runtime-dependency-installation"])
            self._wait_port(self.port, 60)
            for i, nc in enumerate(self.node_configs):
                self._start(f"supernode{i}", [_bin("flower-supernode"), "--insecure", "--superlink",
                                              f"127.0.0.1:{self.port}", "--port", str(free_port()),
                                              "--node-config", nc])
        except BaseException:
            self.close()
            raise
        return self

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a Flower process exited early; see {self.workdir}/*.log")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"SuperLink did not listen on 127.0.0.1:{port} within {timeout:.0f} s")

    def run(self, app_dir: str | os.PathLike, *, run_config: str | None = None,
            done: str | os.PathLike | None = None, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """``flwr run APP_DIR local --stream`` (plus ``--run-config``); waits until ``done``
        exists (the run's last output, e.g. ``OUT/model.sc``) or ``flwr run`` ends, at most
        ``timeout`` seconds."""
        args = [_bin("flwr"), "run", str(Path(app_dir).resolve()), "local", "--stream"]
        if run_config:
            args += ["--run-config", run_config]
        log_path = self.workdir / "flwr-run.log"
        with open(log_path, "wb") as log:
            p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                 cwd=self.workdir, start_new_session=True)
            deadline = time.monotonic() + timeout
            try:
                while p.poll() is None and time.monotonic() < deadline:
                    if done is not None and Path(done).exists():
                        time.sleep(1.0)           # let its writer finish
                        break
                    time.sleep(0.5)
            finally:
                if p.poll() is None:
                    _stop(p)
        return subprocess.CompletedProcess(args, p.returncode, log_path.read_text(errors="replace"), "")

    def close(self) -> None:
        detached = _detached_descendants([p.pid for p in self.procs])
        for p in reversed(self.procs):
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        for p in reversed(self.procs):
            _stop(p, grace=max(0.0, deadline - time.monotonic()))
        self.procs.clear()
        for pid in reversed(detached):     # SuperExec & app processes live in their own sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def __exit__(self, *exc) -> None:
        self.close()

    def logs(self) -> str:
        return "\n".join(f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                         for f in sorted(self.workdir.glob("*.log")))


def _detached_descendants(roots: Sequence[int]) -> list[int]:
    """Pids of the processes Flower detached from ``roots`` (``--parent-pid <pid>``), transitively.
    Linux (/proc) only; elsewhere they exit by themselves once their parent is gone."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    known, found = {str(r) for r in roots}, []
    changed = True
    while changed:
        changed = False
        for d in proc.iterdir():
            if not d.name.isdigit() or d.name in known:
                continue
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for i, a in enumerate(args[:-1]):
                if a == b"--parent-pid" and args[i + 1].decode(errors="replace") in known:
                    known.add(d.name)
                    found.append(int(d.name))
                    changed = True
                    break
    return found


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop(p: subprocess.Popen, grace: float = 2.0) -> None:
    """Stop a process we started and everything in its session (SuperExec, app processes)."""
    if p.poll() is None:
        _signal_group(p, signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)    # leftovers in the session (their group is p.pid)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(1.0)
    except subprocess.TimeoutExpired:
        pass
