"""A real two-node Ray cluster in its own network and PID namespace, driven over stdin/stdout (JSON lines).

    unshare -n -p -f --mount-proc python tests/ray_cluster.py PORT [WORKER_NODES]

Ray binds the host's interface address even when told 127.0.0.1, so each cluster lives in a namespace of
its own (only loopback, brought up here); every Ray process ends with the namespace (this script is its
PID 1). It starts ``ray start --head`` and ``ray start --address`` (one CPU each, dashboard off) as separate
processes, prints ``{"ready": ...}``, then answers one request a line:

    {"run": [argv...]}                                    -> {"rc", "out", "err", "seconds"}
    {"run": [argv...], "kill_worker_when": SQLITE_PATH}   the same, and once that index holds a row and an
                                                          actor on the worker node is embedding a batch,
                                                          SIGKILLs the worker node's processes by PID
                                                          -> also {"killed": true/false}
    {"start_worker": true}                                -> {"ok": true}: another worker node
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

WORKER_PORT_BASE = 36100  # node-manager port of worker node n: WORKER_PORT_BASE + n (to find its processes)


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_worker(port: int, n: int) -> None:
    subprocess.run([ray_cli(), "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--num-gpus=0",
                    f"--node-manager-port={WORKER_PORT_BASE + n}", "--disable-usage-stats"],
                   check=True, capture_output=True)


def worker_pids(n: int) -> list[int]:
    """The raylet of worker node n and every process under it (its actors' workers), by /proc."""
    marker = f"--node_manager_port={WORKER_PORT_BASE + n}"
    parents: dict[int, int] = {}
    roots = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        title = cmdline(int(proc.name))
        if "raylet" in title and marker in title:
            roots.append(int(proc.name))
    pids, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in pids]
        pids.update(children)
        frontier.extend(children)
    return sorted(pids)


def cmdline(pid: int) -> str:
    """The process's title: Ray names an actor's process ``ray::EmbedWorker.embed`` while it runs a batch."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rows_in(db: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def run(request: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(request["run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **request.get("env", {})})
    killed = False
    watch = request.get("kill_worker_when")
    if watch:
        while proc.poll() is None and not killed:
            pids = worker_pids(1)
            if rows_in(watch) > 0 and any(".embed" in cmdline(pid) for pid in pids):
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed = True
                    except ProcessLookupError:
                        pass
            time.sleep(0.01)
    out, err = proc.communicate(timeout=600)
    return {"rc": proc.returncode, "out": out, "err": err, "seconds": time.perf_counter() - started,
            "killed": killed}


def main() -> None:
    port = int(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # a lost node is declared dead after about a second, not the default 30 s
    os.environ.update(RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="3",
                      RAY_health_check_initial_delay_ms="0")
    subprocess.run([ray_cli(), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True)
    workers = 1
    start_worker(port, workers)
    print(json.dumps({"ready": True, "workers": worker_pids(1)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("start_worker"):
            workers += 1
            start_worker(port, workers)
            answer: dict = {"ok": True}
        else:
            answer = run(request)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
