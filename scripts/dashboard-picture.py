#!/usr/bin/env python3
"""Draws the Grafana dashboard's panels (envoy/grafana/custom-error-pages.json) from a real
run, for the README: the sample configuration (envoy/envoy.yaml, two workers, its cache TTL
cut to 10 s so that an outage shows within the run) with the demo backend and error pages,
a real Prometheus (Debian's) scraping Envoy's /stats/prometheus every second, client traffic
over every rule of the sample policy, and the error service stopped for a while in the middle.
Each panel's own PromQL goes to Prometheus; matplotlib draws the answers.

    make dashboard-picture            # writes docs/dashboard.png

Everything binds loopback and is stopped at the end, also on failure."""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = json.loads((ROOT / "envoy/grafana/custom-error-pages.json").read_text())
PY = sys.executable
# What the clients ask for: (host, path, accept), each rule of the sample policy at least once.
TRAFFIC = [
    ("localhost", "/status/404", "text/html"),
    ("localhost", "/status/404", "application/json"),
    ("localhost", "/status/500", "text/html"),
    ("localhost", "/status/502", "text/html"),
    ("localhost", "/dead", "text/html"),
    ("shop.localhost", "/status/404", "text/html"),
    ("shop.localhost", "/images/status/404", "image/*"),
    ("api.localhost", "/status/404", "application/json"),
    ("api.localhost", "/status/503", "application/json"),
    ("api.localhost", "/checkout", "text/html"),
    ("localhost", "/status/200", "text/html"),
]
RATE_WINDOW = "10s"  # `$__rate_interval` for a 1 s scrape
STEP_S = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout} s")


def listening(port):
    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    return True


def http_ok(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


class Stack:
    """The processes of the run; `stop` ends every one still running."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = {}

    def start(self, name, argv):
        log = open(self.workdir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[name]

    def stop(self, name=None):
        for n in [name] if name else list(self.procs):
            p = self.procs.pop(n, None)
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def envoy_config(admin, listener, backend, pages, ttl_s):
    cfg = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener
    ports = {8081: backend, 8082: pages}
    for c in cfg["static_resources"]["clusters"]:
        addr = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        addr["port_value"] = ports.get(addr["port_value"], addr["port_value"])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(ROOT / "target/wasm32-wasip1/release/custom_error_pages.wasm")
    policy = json.loads(wasm["configuration"]["value"])
    policy["errorService"]["cacheTtlSeconds"] = ttl_s
    wasm["configuration"]["value"] = json.dumps(policy)
    return cfg


def drive(port, stop, rps):
    """Client traffic at about `rps` requests per second until `stop` is set."""
    rng = random.Random(7)
    while not stop.is_set():
        host, path, accept = rng.choice(TRAFFIC)
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: {accept}\r\nconnection: close\r\n\r\n".encode())
            while c.recv(65536):
                pass
            c.close()
        except OSError:
            pass
        stop.wait(1 / rps)


def query_range(prom, expr, start, end):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_S})
    with urllib.request.urlopen(f"http://127.0.0.1:{prom}/api/v1/query_range?{q}", timeout=30) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr}: {answer}")
    return answer["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def draw(panels, start, outage, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(16, 3.6 * rows), constrained_layout=True)
    for ax, (panel, series) in zip(axes.flat, panels):
        ax.set_title(panel["title"], fontsize=11, loc="left")
        ax.axvspan(outage[0] - start, outage[1] - start, color="#d62728", alpha=0.08, lw=0)
        stacked = panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
        named = [(name, [(float(t) - start, float(v)) for t, v in values]) for name, values in series]
        named = [(n, pts) for n, pts in named if any(v for _, v in pts) or not stacked]
        if stacked and named:
            xs = sorted({x for _, pts in named for x, _ in pts})
            ys = [[dict(pts).get(x, 0.0) for x in xs] for _, pts in named]
            ax.stackplot(xs, ys, labels=[n for n, _ in named], alpha=0.8)
        else:
            for name, pts in named:
                ax.plot([x for x, _ in pts], [y for _, y in pts], label=name)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.set_ylabel({"reqps": "per second", "ops": "per second", "ms": "ms"}.get(unit, unit), fontsize=9)
        ax.set_xlabel("seconds into the run", fontsize=9)
        ax.grid(alpha=0.3)
        if named:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        else:
            ax.text(0.5, 0.5, "none in this run", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Custom error pages: the sample policy, two workers, the error service down in the shaded span",
                 fontsize=13)
    fig.savefig(out, dpi=80)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs/dashboard.png"))
    ap.add_argument("--seconds", type=int, default=150, help="length of the run")
    ap.add_argument("--rps", type=float, default=25)
    args = ap.parse_args()
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    envoy = ROOT / ".tools/envoy"
    workdir = Path(tempfile.mkdtemp(prefix="dashboard-"))
    stack = Stack(workdir)
    stop = threading.Event()
    try:
        backend, pages, admin, listener, prom = (free_port() for _ in range(5))
        stack.start("backend", [PY, str(ROOT / "envoy/demo/backend.py"), str(backend)])
        pages_argv = [PY, str(ROOT / "envoy/demo/pages.py"), str(pages), str(ROOT / "envoy/error-pages")]
        stack.start("pages", pages_argv)
        wait_until(lambda: listening(backend) and listening(pages), "the demo servers")
        (workdir / "envoy.yaml").write_text(yaml.safe_dump(envoy_config(admin, listener, backend, pages, 10)))
        stack.start("envoy", [str(envoy), "-c", str(workdir / "envoy.yaml"), "--concurrency", "2",
                              "--disable-hot-restart", "-l", "warning"])
        wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), "Envoy")
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": [f"127.0.0.1:{admin}"]}]}],
        }))
        stack.start("prometheus", [prometheus, f"--config.file={workdir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={workdir / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom}"])
        wait_until(lambda: http_ok(f"http://127.0.0.1:{prom}/-/ready"), "Prometheus")
        start = time.time()
        client = threading.Thread(target=drive, args=(listener, stop, args.rps), daemon=True)
        client.start()
        third = args.seconds / 3
        time.sleep(third)
        outage_start = time.time()
        print(f"dashboard-picture: {int(outage_start - start)} s: the error service goes down")
        stack.stop("pages")
        time.sleep(third)
        outage_end = time.time()
        print(f"dashboard-picture: {int(outage_end - start)} s: the error service is back")
        stack.start("pages", pages_argv)
        time.sleep(third)
        stop.set()
        client.join()
        time.sleep(3)  # the last scrape
        end = time.time()
        panels = []
        for panel in DASHBOARD["panels"]:
            series = []
            for target in panel["targets"]:
                expr = (target["expr"].replace("${metrics}", "custom_error_pages")
                        .replace("$error_cluster", "error_pages").replace("$__rate_interval", RATE_WINDOW))
                for s in query_range(prom, expr, start, end):
                    series.append((legend(target["legendFormat"], s["metric"]), s["values"]))
            panels.append((panel, series))
        draw(panels, start, (outage_start, outage_end), args.out)
        print(f"dashboard-picture: wrote {args.out}")
    finally:
        stop.set()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
