"""Fixtures of the browser tests: the demo (built beforehand), headless Chromium, helpers.

The demo is `target/release/client-sim` (build it with `cargo build --release -p client-sim`);
it is started once per session on ephemeral ports (or the fixed defaults when
TRACKLINE_FIXED_PORTS=1) and prints `TRACKING_URL <url>` and `OPERATOR_URL <url>`.
To test a demo that is already running, set TRACKLINE_TRACKING_URL and TRACKLINE_OPERATOR_URL.
"""

import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "target" / "release" / "client-sim"
ARTIFACTS = ROOT / "target" / "browser-artifacts"
# Long enough for every test to run before the deliveries are marked delivered (85% of the run).
DEMO_DURATION_S = int(os.environ.get("TRACKLINE_DEMO_DURATION_S", "240"))
PHONE = (412, 915)
DESKTOP = (1280, 860)


class Demo:
    """The running demo: its URLs and the hub's addresses."""

    def __init__(self, tracking_url, operator_url, edge_ports=None):
        self.edge_ports = edge_ports  # {"quic": udp port, "https": tcp port} of the drivers' edge
        self.tracking_url = tracking_url
        self.operator_url = operator_url
        u = urllib.parse.urlsplit(tracking_url)
        self.origin = f"{u.scheme}://{u.netloc}"
        self.delivery_id = u.path.rstrip("/").split("/")[-1]
        self.token = urllib.parse.parse_qs(u.query)["token"][0]
        self.operator_token = urllib.parse.parse_qs(urllib.parse.urlsplit(operator_url).query)["token"][0]

    def get_json(self, path):
        """GET a JSON document from the hub; returns (status, body)."""
        try:
            with urllib.request.urlopen(self.origin + path, timeout=5) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, None

    def status(self):
        q = urllib.parse.urlencode({"token": self.token})
        return self.get_json(f"/api/v1/tracking/{self.delivery_id}/status?{q}")

    def webtransport_port(self):
        code, info = self.get_json("/api/v1/webtransport/info")
        assert code == 200, code
        return int(info["port"])


def _reader(stream, lines, log):
    for line in iter(stream.readline, ""):
        log.write(line)
        log.flush()
        lines.put(line.rstrip("\n"))


@pytest.fixture(scope="session")
def demo():
    if os.environ.get("TRACKLINE_TRACKING_URL"):
        # A demo that is already running (e.g. started by hand); nothing to start or stop.
        yield Demo(os.environ["TRACKLINE_TRACKING_URL"], os.environ["TRACKLINE_OPERATOR_URL"])
        return
    if not DEMO.exists():
        pytest.fail(f"{DEMO} is missing: run `cargo build --release -p client-sim` first")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="trackline-browser-demo-")
    args = [str(DEMO), "--drivers", "6", "--consumers", "6", "--duration", f"{DEMO_DURATION_S}s", "--data-dir", data_dir]
    if os.environ.get("TRACKLINE_FIXED_PORTS") == "1":
        args.append("--fixed-ports")
    log = open(ARTIFACTS / "demo.stdout.log", "w")
    err = open(ARTIFACTS / "demo.stderr.log", "w")
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1, env={**os.environ, "NO_COLOR": "1"}
    )
    lines = queue.Queue()
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines, log), daemon=True)
    reader.start()
    urls = {}
    edge_ports = None
    deadline = time.monotonic() + 90
    try:
        while len(urls) < 2:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                pytest.fail(f"the demo printed no TRACKING_URL/OPERATOR_URL (exit {proc.poll()}); see {ARTIFACTS}/demo.*.log")
            try:
                line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            for key in ("TRACKING_URL", "OPERATOR_URL"):
                if line.startswith(key + " "):
                    urls[key] = line.split(" ", 1)[1].strip()
            edge = re.match(r"edge: quic udp/(\d+)\s+https://[^:]+:(\d+)", line)
            if edge:
                edge_ports = {"quic": int(edge.group(1)), "https": int(edge.group(2))}
        yield Demo(urls["TRACKING_URL"], urls["OPERATOR_URL"], edge_ports)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
        log.close()
        err.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def browser_factory():
    """Starts headless Chromium windows (fresh profile each); all are closed after the test."""
    started = []

    def start(size=PHONE):
        profile = tempfile.mkdtemp(prefix="trackline-chromium-")
        opts = Options()
        opts.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            # Headless windows are at least 500 px wide: narrower sizes are emulated phones.
            f"--window-size={max(size[0], 500)},{size[1]}",
        ):
            opts.add_argument(flag)
        if size[0] < 500:
            metrics = {"width": size[0], "height": size[1], "pixelRatio": 1.0}
            opts.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        started.append((driver, profile))
        return driver

    yield start
    for driver, profile in started:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def save(driver, name):
    """Saves a screenshot and the browser console to target/browser-artifacts/<name>.*."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    try:
        logs = driver.get_log("browser")
    except Exception:  # not every driver keeps logs
        logs = []
    (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(f"{e['level']} {e['message']}" for e in logs))


def distance_m(a, b):
    """Great-circle distance between two {lat, lng} dicts, in metres."""
    rad = math.pi / 180
    dlat = (b["lat"] - a["lat"]) * rad
    dlng = (b["lng"] - a["lng"]) * rad
    h = math.sin(dlat / 2) ** 2 + math.cos(a["lat"] * rad) * math.cos(b["lat"] * rad) * math.sin(dlng / 2) ** 2
    return 2 * 6371008.8 * math.asin(min(1.0, math.sqrt(h)))


class Blocked:
    """Drops packets to the given (protocol, port) pairs arriving on loopback (iptables);
    the rules are removed on exit."""

    def __init__(self, *ports):
        self.rules = [["INPUT", "-i", "lo", "-p", proto, "--dport", str(port), "-j", "DROP"] for proto, port in ports]

    def __enter__(self):
        if shutil.which("iptables") is None:
            pytest.fail("iptables is missing: run scripts/setup.sh")
        for i, rule in enumerate(self.rules):
            try:
                subprocess.run(["iptables", "-I", *rule], check=True)
            except Exception:
                self.rules = self.rules[:i]
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc):
        for rule in self.rules:
            subprocess.run(["iptables", "-D", *rule], check=False)
