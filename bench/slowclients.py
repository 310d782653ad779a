"""Floods and slow clients: a well-behaved client's p99 under 500 idle connections + 50 slowloris clients,
divided by its p99 with nobody else connected, on a standalone model server and through `selfmaker up`.
Then the RSS of both processes before and after N calls (default 100,000) through `selfmaker up`.

The attack (:class:`Attack`, also used by the tests) runs in one background thread, bounded in time:
``idle`` sockets that connect and send nothing (reopened when the server closes them), and ``slow``
clients of which half drip a header line and half a body byte every ``interval`` seconds. Goal: p99 under
attack < 3 x the idle p99. Targets are 127.0.0.1 only.

    .venv/bin/python -m bench slowclients [--calls 400] [--rss-calls 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.proc import free_port  # noqa: E402

ROW = b"0.5,1.0,-0.3,0.2"


class Attack:
    """Idle connections and slowloris clients against ``host:port`` from one background thread.

    Slow clients send ``POST path`` and then either one more header line or one more body byte every
    ``interval`` seconds, never finishing; a socket the server closes is reopened, so the pressure stays
    the same for as long as the attack runs (at most ``max_seconds``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        idle: int = 500,
        slow: int = 50,
        interval: float = 0.5,
        max_seconds: float = 300.0,
    ) -> None:
        self.address = (host, port)
        self.path = path
        self.idle, self.slow = idle, slow
        self.interval = interval
        self.max_seconds = max_seconds
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attack", daemon=True)
        self._idle: list[socket.socket | None] = []
        self._slow: list[socket.socket | None] = []

    def _open(self) -> socket.socket | None:
        try:
            return socket.create_connection(self.address, timeout=5)
        except OSError:
            return None

    def _start_slow(self, index: int) -> socket.socket | None:
        sock = self._open()
        if sock is None:
            return None
        head = f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        if index % 2:  # drips its body: the head is whole, the body never is
            head += "Content-Length: 100000\r\n\r\n"
        try:
            sock.sendall(head.encode())
        except OSError:
            sock.close()
            return None
        return sock

    def __enter__(self) -> Attack:
        self._idle = [self._open() for _ in range(self.idle)]
        self._slow = [self._start_slow(i) for i in range(self.slow)]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for sock in [*self._idle, *self._slow]:
            if sock is not None:
                sock.close()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.wait(self.interval) and time.monotonic() < deadline:
            for i, sock in enumerate(self._slow):
                try:
                    if sock is None:
                        raise OSError("reopen")
                    sock.sendall(b"1" if i % 2 else f"X-Drip-{i}: {time.monotonic()}\r\n".encode())
                except OSError:
                    if sock is not None:
                        sock.close()
                    self._slow[i] = self._start_slow(i)
                    self.reopened += 1
            self._reopen_closed_idle()

    def _reopen_closed_idle(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            for i, sock in enumerate(self._idle):
                if sock is None:
                    self._idle[i] = self._open()
                    self.reopened += 1
                else:
                    selector.register(sock, selectors.EVENT_READ, i)
            for key, _ in selector.select(0):  # readable while idle = closed by the server
                sock = self._idle[key.data]
                if sock is not None:
                    selector.unregister(sock)
                    sock.close()
                self._idle[key.data] = self._open()
                self.reopened += 1
        finally:
            selector.close()


def well_behaved_calls(host: str, port: int, path: str, calls: int, timeout: float = 30.0) -> dict[str, Any]:
    """``calls`` sequential invocations over one keep-alive connection: their statuses and latencies."""
    statuses: list[int] = []
    latencies: list[float] = []
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        for _ in range(calls):
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=ROW, headers={"Content-Type": "text/csv"})
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
            except OSError as exc:
                statuses.append(0)
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
                latencies.append(time.perf_counter() - started)
                if isinstance(exc, TimeoutError):
                    break  # one timeout is enough to know the client was stopped
                continue
            latencies.append(time.perf_counter() - started)
    finally:
        conn.close()
    ordered = sorted(latencies)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)] if ordered else float("nan")
    return {"statuses": statuses, "ok": statuses.count(200), "p99_ms": p99 * 1e3, "calls": len(statuses)}


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants in MB (the model server's gunicorn master + workers)."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return float(total) / 1e6


def _load(url_host: str, port: int, path: str, calls: int, concurrency: int = 8) -> int:
    """``calls`` invocations from ``concurrency`` threads (bounded); returns the number that failed."""
    failures = 0
    lock = threading.Lock()
    share = [calls // concurrency + (1 if i < calls % concurrency else 0) for i in range(concurrency)]

    def work(n: int) -> None:
        nonlocal failures
        result = well_behaved_calls(url_host, port, path, n)
        with lock:
            failures += n - result["ok"]

    threads = [threading.Thread(target=work, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400, help="well-behaved calls per measurement (400)")
    parser.add_argument("--rss-calls", type=int, default=100_000, help="calls between the RSS readings")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import boto3

    from bench.router import stop, wait_ready

    work = Path(tempfile.mkdtemp(prefix="selfmaker-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    results: dict[str, Any] = {}
    try:
        from bench.harness import build_classifier_tar
        from common.archives import safe_extract

        archive = build_classifier_tar(work, 4)
        safe_extract(archive, work / "model")
        direct_port, up_port = free_port(), free_port()
        with open(work / "direct.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "serving",
                        "--model-dir",
                        str(work / "model"),
                        "--host",
                        "127.0.0.1",
                    ]
                    + ["--port", str(direct_port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        wait_ready(f"http://127.0.0.1:{direct_port}/ping", procs[-1])
        with open(work / "up.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "selfmaker",
                        "up",
                        "--home",
                        str(work / "home"),
                        "--port",
                        str(up_port),
                    ]
                    + ["--log-level", "WARNING"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    cwd=str(ROOT),
                )
            )
        up = f"http://127.0.0.1:{up_port}"
        wait_ready(up + "/ping", procs[-1])
        sm = boto3.client(
            "sagemaker",
            endpoint_url=up,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        sm.create_model(
            ModelName="bench", PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": archive.as_uri()}
        )
        sm.create_endpoint_config(
            EndpointConfigName="bench",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "bench",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
        sm.create_endpoint(EndpointName="bench", EndpointConfigName="bench")
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName="bench", WaiterConfig={"Delay": 0.25, "MaxAttempts": 240}
        )
        targets = {
            "model server": (direct_port, "/invocations"),
            "selfmaker up": (up_port, "/endpoints/bench/invocations"),
        }
        print(f"load average before: {os.getloadavg()[0]:.1f}; {args.calls} sequential calls per cell")
        print(f"{'target':<14}{'idle p99 ms':>13}{'attacked p99 ms':>17}{'ratio':>8}{'ok under attack':>17}")
        for label, (port, path) in targets.items():
            well_behaved_calls("127.0.0.1", port, path, 50)  # warm-up
            idle = well_behaved_calls("127.0.0.1", port, path, args.calls)
            with Attack("127.0.0.1", port, path) as attack:
                attacked = well_behaved_calls("127.0.0.1", port, path, args.calls)
            ratio = attacked["p99_ms"] / idle["p99_ms"]
            results[label] = {
                "idle_p99_ms": idle["p99_ms"],
                "attacked_p99_ms": attacked["p99_ms"],
                "ratio": ratio,
                "ok_under_attack": attacked["ok"],
                "calls": args.calls,
                "reopened": attack.reopened,
            }
            print(
                f"{label:<14}{idle['p99_ms']:>13.2f}{attacked['p99_ms']:>17.2f}{ratio:>8.2f}"
                f"{attacked['ok']:>11}/{args.calls}   (goal: ratio < 3, all ok)"
            )

        if args.rss_calls:
            up_pid = procs[-1].pid
            import psutil

            servers = [c.pid for c in psutil.Process(up_pid).children() if "serving" in " ".join(c.cmdline())]
            before = {"selfmaker up": rss_mb(up_pid), "model server": sum(rss_mb(p) for p in servers)}
            started = time.monotonic()
            failures = _load("127.0.0.1", up_port, "/endpoints/bench/invocations", args.rss_calls)
            elapsed = time.monotonic() - started
            after = {"selfmaker up": rss_mb(up_pid), "model server": sum(rss_mb(p) for p in servers)}
            results["rss"] = {
                "calls": args.rss_calls,
                "failures": failures,
                "before_mb": before,
                "after_mb": after,
            }
            print(
                f"RSS over {args.rss_calls} calls through selfmaker up ({elapsed:.0f} s, {failures} failed): "
                + "; ".join(
                    f"{k} {before[k]:.1f} -> {after[k]:.1f} MB ({after[k] / before[k]:.2f}x)" for k in before
                )
            )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
