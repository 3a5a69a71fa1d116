"""Checks the chart's alerts with promtool and the Grafana dashboard's queries.

The PrometheusRule is rendered by Helm's own engine (helm-python-sdk, as in test_deploy.py) for
release "rc" in namespace "realtime", and its groups are handed to `promtool check rules` and
`promtool test rules` with the unit tests in deploy/tests/promtool/ (README.md there). The
real gateway binary is booted once to check what those tests assume about it: the counters the
alerts count exist at 0 from start-up, which is what lets RoomcastEventsLost see a replica's
first resync.

Needs: promtool (Debian's `prometheus` package; scripts/test installs it with apt when it can,
else these tests are skipped, except where the environment variable CI is set, as on GitHub
Actions: there a missing promtool fails them), helm-python-sdk and PyYAML; for the start-up
check, a built gateway (ROOMCAST_GATEWAY_BIN, default target/debug/roomcast-gateway) and
redis-server.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from functools import cache
from unittest import mock
from pathlib import Path

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "roomcast"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"
DASHBOARD = CHART / "dashboards" / "roomcast.json"
GATEWAY = Path(os.environ.get("ROOMCAST_GATEWAY_BIN", REPO / "target" / "debug" / "roomcast-gateway"))
RELEASE, NAMESPACE, JOB = "rc", "realtime", "rc-roomcast"
RULES_FILE = "roomcast-rules.yaml"  # the name the promtool tests' rule_files give

# PromQL pieces, enough for the expressions here (no nested braces in label values).
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
METRIC = re.compile(r"\b((?:roomcast|process)_[a-z_]+|up)\b")
AGGREGATION = re.compile(r"\b(sum|min|max|avg|count|topk|bottomk|quantile)\s+by\s*\(([^)]*)\)")
RANGE = re.compile(r"\[([^\]]+)\]")


PROMTOOL_FALLBACK = Path("/usr/bin/promtool")


def in_ci() -> bool:
    """Whether this runs in CI (GitHub Actions and most CI systems set CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def find_promtool() -> str:
    promtool = shutil.which("promtool") or (str(PROMTOOL_FALLBACK) if PROMTOOL_FALLBACK.exists() else None)
    if not promtool:
        message = "promtool is not installed (Debian's prometheus package; scripts/test installs it as root)"
        if in_ci():
            # CI installs it (.github/workflows/ci.yml): a skip there would hide untested alerts.
            raise AssertionError(f"{message}, and CI is set: the alert tests must run in CI")
        raise unittest.SkipTest(message)
    return promtool


def monitoring_values(base: str = "defaults-values.yaml", service_monitor: bool = True) -> dict:
    values = yaml.safe_load((CHART / "ci" / base).read_text()) or {}
    values.setdefault("serviceMonitor", {})["enabled"] = service_monitor
    values.setdefault("prometheusRule", {})["enabled"] = True
    return values


def render_rules(values: dict) -> dict:
    """The PrometheusRule's spec ({"groups": [...]}, a Prometheus rule file) for `values`."""
    out = helm.Chart.load(str(CHART)).render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    rules = [
        doc
        for path, text in out.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "PrometheusRule"
    ]
    assert len(rules) == 1, f"expected one PrometheusRule, got {len(rules)}"
    return rules[0]["spec"]


@cache
def default_rules() -> dict:
    return render_rules(monitoring_values())


def alerts(spec: dict) -> list[dict]:
    return [rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule]


def promtool_test_files() -> list[Path]:
    return sorted(PROMTOOL_TESTS.glob("*.yaml"))


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(int(n) * units[u] for n, u in parts)


class PromtoolRun:
    """A temporary directory with the rendered rules and copies of the promtool tests."""

    def __init__(self, spec: dict, tests: dict[str, str] | None = None) -> None:
        self.promtool = find_promtool()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name)
        (self.path / RULES_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
        for name, text in (tests if tests is not None else {p.name: p.read_text() for p in promtool_test_files()}).items():
            (self.path / name).write_text(text)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.promtool, *args], cwd=self.path, capture_output=True, text=True, timeout=120)

    def close(self) -> None:
        self.dir.cleanup()


class PromtoolDiscovery(unittest.TestCase):
    def test_missing_promtool_fails_in_ci_and_skips_elsewhere(self) -> None:
        module = sys.modules[__name__]
        with mock.patch.object(shutil, "which", return_value=None), mock.patch.object(module, "PROMTOOL_FALLBACK", Path("/nonexistent/promtool")):
            for value in ["true", "1"]:
                with self.subTest(CI=value), mock.patch.dict(os.environ, {"CI": value}):
                    with self.assertRaisesRegex(AssertionError, "CI is set: the alert tests must run in CI"):
                        find_promtool()
            for value in [None, "", "false"]:
                env = {k: v for k, v in os.environ.items() if k != "CI"} | ({} if value is None else {"CI": value})
                with self.subTest(CI=value), mock.patch.dict(os.environ, env, clear=True):
                    with self.assertRaises(unittest.SkipTest):
                        find_promtool()
        # Where it is installed, found whatever CI says.
        if shutil.which("promtool") or PROMTOOL_FALLBACK.exists():
            with mock.patch.dict(os.environ, {"CI": "true"}):
                self.assertTrue(Path(find_promtool()).exists())


# ---------------------------------------------------------------------------------------------
# Alerts


class Alerts(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.run_dir = PromtoolRun(default_rules())

    @classmethod
    def tearDownClass(cls) -> None:
        cls.run_dir.close()

    def promtool(self, *args: str) -> subprocess.CompletedProcess:
        return self.run_dir.run(*args)

    def test_rules_pass_promtool_check(self) -> None:
        result = self.promtool("check", "rules", RULES_FILE)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        # Also as every ci/ values file with alerts renders them (labels, namespaceOverride...).
        checked = 0
        for path in sorted((CHART / "ci").glob("*-values.yaml")):
            values = load_ci(path.name)
            if not values.get("prometheusRule", {}).get("enabled"):
                continue
            checked += 1
            with self.subTest(values=path.name):
                run = PromtoolRun(render_rules(values), tests={})
                self.addCleanup(run.close)
                result = run.run("check", "rules", RULES_FILE)
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertGreaterEqual(checked, 1)

    def test_promtool_unit_tests_pass(self) -> None:
        files = promtool_test_files()
        self.assertGreaterEqual(len(files), 4)
        for path in files:
            with self.subTest(file=path.name):
                result = self.promtool("test", "rules", path.name)
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_every_alert_has_a_firing_and_a_silent_case(self) -> None:
        fires, silent = set(), set()
        for path in promtool_test_files():
            doc = yaml.safe_load(path.read_text())
            self.assertEqual(doc["rule_files"], [RULES_FILE], path.name)
            for group in doc["tests"]:
                for case in group.get("alert_rule_test", []):
                    (fires if case.get("exp_alerts") else silent).add(case["alertname"])
        names = {rule["alert"] for rule in alerts(default_rules())}
        self.assertGreaterEqual(len(names), 10)
        self.assertEqual(names - fires, set(), "alerts without a test where they fire")
        self.assertEqual(names - silent, set(), "alerts without a test where they stay silent")
        self.assertEqual((fires | silent) - names, set(), "tests of alerts that do not exist")

    def test_first_incident_needs_the_zero_sample(self) -> None:
        """The first-incident test is not vacuous: born at 1 instead of 0, it fails."""
        text = (PROMTOOL_TESTS / "first-incident.yaml").read_text()
        pre_registered = "values: '_x5 0x5 1x30'"
        self.assertEqual(text.count(pre_registered), 1)
        born_at_one = text.replace(pre_registered, "values: '_x10 1x30'")
        run = PromtoolRun(default_rules(), tests={"first-incident.yaml": born_at_one})
        self.addCleanup(run.close)
        result = run.run("test", "rules", "first-incident.yaml")
        self.assertNotEqual(result.returncode, 0, "the alert fired on a series born at 1?")
        self.assertIn("first resync after start-up", result.stdout + result.stderr)

    def test_jwks_alerts_tell_a_ridden_out_failure_from_an_outage(self) -> None:
        """jwks.yaml is not vacuous: the gateway keeps its last good keys when a refresh fails,
        so alerting on any failure would fire on a flaky provider, and alerting on no keys only
        would miss a provider that is down for good until its next key rotation."""
        alternatives = {
            "any failure in 15m, for 15m": (
                f'sum by (namespace, job, instance, jwks) (increase(roomcast_jwks_fetches_total{{job="{JOB}", namespace="{NAMESPACE}", result="error"}}[15m])) > 0',
                "failures between successes, are no alert",
            ),
            "no keys": (
                f'max by (namespace, job, instance, jwks) (roomcast_jwks_keys{{job="{JOB}", namespace="{NAMESPACE}"}}) == 0',
                "a provider down for good alerts",
            ),
        }
        for name, (expr, failing_group) in alternatives.items():
            with self.subTest(alternative=name):
                spec = copy.deepcopy(default_rules())
                (rule,) = [r for r in alerts(spec) if r["alert"] == "RoomcastJwksFetchFailing"]
                rule["expr"] = expr
                run = PromtoolRun(spec, tests={"jwks.yaml": (PROMTOOL_TESTS / "jwks.yaml").read_text()})
                self.addCleanup(run.close)
                result = run.run("test", "rules", "jwks.yaml")
                self.assertNotEqual(result.returncode, 0, f"jwks.yaml passes with {name}")
                self.assertIn(failing_group, result.stdout + result.stderr)

    def test_expressions_select_this_release_and_keep_routing_labels(self) -> None:
        """Every series selector names the release's job and namespace; every aggregation keeps them."""
        for rule in alerts(default_rules()):
            expr = rule["expr"]
            with self.subTest(alert=rule["alert"]):
                selectors = SELECTOR.findall(expr)
                self.assertTrue(selectors)
                for metric, matchers in selectors:
                    found = {(name, op, value) for name, op, value in MATCHER.findall(matchers)}
                    self.assertIn(("job", "=", JOB), found, metric)
                    self.assertIn(("namespace", "=", NAMESPACE), found, metric)
                # No bare metric name that would match every job.
                for match in METRIC.finditer(expr):
                    self.assertTrue(expr[match.end() :].startswith("{"), f"{match.group(1)} without label matchers")
                for _op, labels in AGGREGATION.findall(expr):
                    by = {label.strip() for label in labels.split(",")}
                    self.assertTrue({"namespace", "job"} <= by, f"by ({labels}) drops namespace or job")
                self.assertNotRegex(expr, r"\bwithout\s*\(")
                self.assertNotRegex(expr, r"\b(sum|min|max|avg|count)\s*\(", "aggregation without by (...)")

    def test_rate_windows_cover_several_scrapes(self) -> None:
        """rate()/increase() windows hold at least 4 scrapes at the ServiceMonitor's interval."""
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        interval = seconds(values["serviceMonitor"]["interval"])
        for rule in alerts(default_rules()):
            windows = RANGE.findall(rule["expr"])
            with self.subTest(alert=rule["alert"]):
                for window in windows:
                    self.assertGreaterEqual(seconds(window), 4 * interval, window)
                if "for" in rule:
                    # A `for` shorter than one evaluation interval is no `for` at all.
                    self.assertGreaterEqual(seconds(rule["for"]), 60)

    def test_alerts_are_labelled_and_described(self) -> None:
        for rule in alerts(default_rules()):
            with self.subTest(alert=rule["alert"]):
                self.assertRegex(rule["alert"], r"^Roomcast[A-Z][A-Za-z]+$")
                self.assertIn(rule["labels"]["severity"], {"critical", "warning", "info"})
                self.assertTrue(rule["annotations"]["summary"])
                self.assertTrue(rule["annotations"]["description"])

    def test_absent_alert_comes_with_the_service_monitor(self) -> None:
        """Without the chart's ServiceMonitor the job label is someone else's: no absence alert."""
        names = {r["alert"] for r in alerts(render_rules(monitoring_values(service_monitor=False)))}
        self.assertNotIn("RoomcastMetricsAbsent", names)
        self.assertIn("RoomcastMetricsAbsent", {r["alert"] for r in alerts(default_rules())})

    def test_rules_follow_a_namespace_override(self) -> None:
        values = monitoring_values()
        values["namespaceOverride"] = "elsewhere"
        try:
            spec = render_rules(values)
        except helm.HelmValuesError:
            self.skipTest("the chart has no namespaceOverride value")
        for rule in alerts(spec):
            self.assertIn('namespace="elsewhere"', rule["expr"])


def load_ci(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


# ---------------------------------------------------------------------------------------------
# The first incident, on the real gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def parse_exposition(text: str) -> dict[str, dict[frozenset, float]]:
    """Prometheus text format: {metric: {frozenset(labels): value}}."""
    series: dict[str, dict[frozenset, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        assert match, f"unparsable line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        series.setdefault(match.group(1), {})[labels] = float(match.group(3))
    return series


class JwksServer:
    """Serves the gateway tests' JWKS fixture on a loopback port (http is allowed to loopback)."""

    DOCUMENT = REPO / "gateway" / "tests" / "fixtures" / "jwks.json"

    def __init__(self) -> None:
        document = self.DOCUMENT.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.keys = len(json.loads(document)["keys"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Series a gateway exports only for a JWKS URL (checked by test_jwks_series_exist_from_start_up).
JWKS_METRICS = {"roomcast_jwks_fetches_total", "roomcast_jwks_keys"}


class GatewayAtStartUp(unittest.TestCase):
    """What one freshly started gateway exports, before anything happened to it. Its key is a
    JWKS URL (served here), so the JWKS series the alerts read are exported too."""

    @classmethod
    def setUpClass(cls) -> None:
        find_promtool()
        if not GATEWAY.exists():
            raise unittest.SkipTest(f"{GATEWAY} is not built (cargo build -p roomcast-gateway)")
        if not shutil.which("redis-server"):
            raise unittest.SkipTest("redis-server is not installed")
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        cls.addClassCleanup(lambda: (redis.kill(), redis.wait()))
        # Redis answers before the gateway starts: a refused first connection would count as a
        # Redis error and the counters would not be at 0.
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.05)
        jwks = JwksServer()
        cls.addClassCleanup(jwks.stop)
        cls.jwks_keys = jwks.keys
        admin = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "ROOMCAST_JWT_JWKS_URL": jwks.url,
            "ROOMCAST_REDIS_URL": f"redis://127.0.0.1:{redis_port}",
            "ROOMCAST_LISTEN": f"127.0.0.1:{free_port()}",
            "ROOMCAST_API_LISTEN": f"127.0.0.1:{free_port()}",
            "ROOMCAST_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        }
        log = tempfile.TemporaryFile()
        cls.addClassCleanup(log.close)
        gateway = subprocess.Popen([GATEWAY], env=env, stdout=log, stderr=subprocess.STDOUT)
        cls.addClassCleanup(lambda: (gateway.kill(), gateway.wait()))
        deadline = time.monotonic() + 60
        while True:
            if gateway.poll() is not None:
                log.seek(0)
                raise AssertionError(f"gateway exited with {gateway.returncode}:\n{log.read().decode(errors='replace')}")
            try:
                if http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("gateway not ready within 60 s")
            time.sleep(0.1)
        status, body = http_get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200, status
        cls.scrape = parse_exposition(body)

    def test_metrics_the_alerts_read_exist_from_start_up(self) -> None:
        """An alert on a series that is not there yet cannot see its first change.

        Every counter and gauge the alerts read is exported from start-up; the counters of the
        alerts that fire on any increase (`... > 0`: RoomcastEventsLost) are there at 0.
        Histograms (_bucket/_count) appear with their first observation and are left out: the
        alerts on them are about sustained rates, not a first event.
        """
        used, zero = set(), set()
        for rule in alerts(default_rules()):
            names = {m for m in METRIC.findall(rule["expr"]) if m != "up" and not re.search(r"_(bucket|count|sum)$", m)}
            names -= JWKS_METRICS
            used |= names
            if re.search(r"\)\s*>\s*0\s*$", rule["expr"]):
                zero |= {m for m in names if m.endswith("_total")}
        self.assertIn("roomcast_resyncs_total", zero)
        for metric in sorted(used):
            with self.subTest(metric=metric):
                self.assertTrue(metric in self.scrape, f"{metric} is not exported by a freshly started gateway ({GATEWAY})")
                if metric in zero:
                    self.assertEqual(set(self.scrape[metric].values()), {0.0}, "a fresh replica's counter is not 0")

    def test_jwks_series_exist_from_start_up(self) -> None:
        """Each JWKS URL's series, as the JWKS alerts read them, exported from start-up: the
        fetch counters (error at 0, so RoomcastJwksFetchFailing sees the first failure) and the
        keys the start-up fetch got."""
        used = set()
        for rule in alerts(default_rules()):
            used |= set(METRIC.findall(rule["expr"])) & JWKS_METRICS
        self.assertEqual(used, JWKS_METRICS)
        fetches = {dict(labels).get("result"): v for labels, v in self.scrape.get("roomcast_jwks_fetches_total", {}).items() if dict(labels).get("jwks") == "default"}
        self.assertEqual(fetches, {"updated": 1.0, "not_modified": 0.0, "error": 0.0})
        keys = {dict(labels).get("jwks"): v for labels, v in self.scrape.get("roomcast_jwks_keys", {}).items()}
        self.assertEqual(keys, {"default": float(self.jwks_keys)})

    def test_first_resync_fires_on_series_as_the_gateway_exports_them(self) -> None:
        """promtool, fed roomcast_resyncs_total as scraped at start-up, then one resync."""
        booted = self.scrape.get("roomcast_resyncs_total", {})
        target = {"job": JOB, "namespace": NAMESPACE, "instance": "10.0.0.1:9090", "pod": "rc-roomcast-0"}

        def series(labels: dict) -> str:
            return "roomcast_resyncs_total{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"

        input_series = []
        for labels, value in booted.items():
            labels = dict(labels) | target
            # Down for 5 minutes, then scraped as it started; the "gap" one counts a resync at 11m.
            step = 1 if labels.get("reason") == "gap" else 0
            input_series.append({"series": series(labels), "values": f"_x5 {value:g}x5 {value + step:g}x20"})
        if not any(dict(labels).get("reason") == "gap" for labels in booted):
            # Not pre-registered: the series first appears with the resync itself.
            input_series.append({"series": series(target | {"reason": "gap"}), "values": "_x10 1x20"})
        test = {
            "rule_files": [RULES_FILE],
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": input_series,
                    "alert_rule_test": [
                        {
                            "eval_time": "12m",
                            "alertname": "RoomcastEventsLost",
                            "exp_alerts": [
                                {
                                    "exp_labels": {"severity": "warning", "namespace": NAMESPACE, "job": JOB},
                                    "exp_annotations": next(
                                        r["annotations"] for r in alerts(default_rules()) if r["alert"] == "RoomcastEventsLost"
                                    ),
                                }
                            ],
                        }
                    ],
                }
            ],
        }
        run = PromtoolRun(default_rules(), tests={"generated.yaml": yaml.safe_dump(test)})
        self.addCleanup(run.close)
        result = run.run("test", "rules", "generated.yaml")
        self.assertEqual(
            result.returncode,
            0,
            "RoomcastEventsLost misses a fresh replica's first resync: does the gateway still create "
            "roomcast_resyncs_total at 0 (metrics.rs register())?\n" + result.stdout + result.stderr,
        )


# ---------------------------------------------------------------------------------------------
# Dashboard


@cache
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


class Dashboard(unittest.TestCase):
    def test_template_variables(self) -> None:
        variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
        self.assertEqual(list(variables), ["datasource", "job", "namespace", "instance"])
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        for name in ["job", "namespace", "instance"]:
            v = variables[name]
            with self.subTest(variable=name):
                self.assertEqual(v["type"], "query")
                self.assertEqual(v["datasource"]["uid"], "${datasource}")
                self.assertTrue(v["multi"])
                self.assertTrue(v["includeAll"])
                self.assertIn(f", {name})", v["query"])
        # Each narrows the next: namespaces of the chosen jobs, instances of both.
        self.assertIn('job=~"$job"', variables["namespace"]["query"])
        self.assertIn('job=~"$job"', variables["instance"]["query"])
        self.assertIn('namespace=~"$namespace"', variables["instance"]["query"])
        # compose's series have no namespace label: "All" must match the empty value.
        self.assertEqual(variables["namespace"]["allValue"], ".*")

    def test_every_query_uses_the_variables(self) -> None:
        exprs = dashboard_exprs()
        self.assertGreaterEqual(len(exprs), 30)
        for title, expr in exprs:
            with self.subTest(panel=title, expr=expr):
                selectors = SELECTOR.findall(expr)
                self.assertTrue(selectors)
                for metric, matchers in selectors:
                    found = set(MATCHER.findall(matchers))
                    for name in ["job", "namespace", "instance"]:
                        self.assertIn((name, "=~", f"${name}"), found, metric)
                for match in METRIC.finditer(expr):
                    self.assertTrue(expr[match.end() :].startswith("{"), f"{match.group(1)} without the variables")

    def test_no_hard_coded_rate_windows(self) -> None:
        for title, expr in dashboard_exprs():
            with self.subTest(panel=title, expr=expr):
                self.assertEqual(set(RANGE.findall(expr)) - {"$__rate_interval"}, set())
                self.assertNotRegex(expr, r"\[\d+[smhd]\]")

    def test_panels_use_the_datasource_variable(self) -> None:
        for p in dashboard()["panels"]:
            if p["type"] == "row":
                continue
            with self.subTest(panel=p["title"]):
                self.assertEqual(p["datasource"]["uid"], "${datasource}")
                for t in p["targets"]:
                    self.assertEqual(t["datasource"]["uid"], "${datasource}")

    def test_every_query_parses(self) -> None:
        """promtool parses each query (variables replaced by values Grafana could send)."""
        rules = []
        for i, (_title, expr) in enumerate(dashboard_exprs()):
            concrete = expr.replace("$__rate_interval", "1m")
            concrete = re.sub(r"\$(job|namespace|instance)\b", ".*", concrete)
            rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
        run = PromtoolRun({"groups": [{"name": "dashboard", "rules": rules}]}, tests={})
        self.addCleanup(run.close)
        result = run.run("check", "rules", RULES_FILE)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_panels_for_the_runtime_metrics(self) -> None:
        text = " ".join(expr for _title, expr in dashboard_exprs())
        for metric in [
            "roomcast_redis_connected",
            "roomcast_redis_command_duration_seconds_bucket",
            "roomcast_http_request_duration_seconds_bucket",
            "roomcast_ready",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds_total",
            "roomcast_tokio_alive_tasks",
            "roomcast_tokio_global_queue_depth",
            "roomcast_tokio_workers",
        ]:
            self.assertIn(metric + "{", text)
        # The HTTP latency panel is the publish API's.
        latency = [e for t, e in dashboard_exprs() if t == "HTTP API latency"]
        self.assertTrue(latency)
        for expr in latency:
            self.assertIn('listener="api"', expr)

    def test_jwks_panel(self) -> None:
        """What the JWKS alerts watch is on the dashboard: fetches by result, keys per replica."""
        exprs = [e for t, e in dashboard_exprs() if t == "JWKS fetches and keys"]
        self.assertEqual(len(exprs), 2)
        fetches, keys = exprs
        self.assertIn("roomcast_jwks_fetches_total{", fetches)
        self.assertRegex(fetches, r"\bby \((jwks, result|result, jwks)\)")
        self.assertIn("roomcast_jwks_keys{", keys)
        self.assertRegex(keys, r"\bmin by \((jwks, instance|instance, jwks)\)", "the replica with the fewest keys shows")

    def test_layout(self) -> None:
        panels = dashboard()["panels"]
        ids = [p["id"] for p in panels]
        self.assertEqual(len(ids), len(set(ids)))
        cells = set()
        for p in panels:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            own = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            self.assertFalse(own & cells, f"{p['title']} overlaps another panel")
            cells |= own

    def test_compose_grafana_knows_the_scrape_interval(self) -> None:
        """$__rate_interval is 4x the data source's scrape interval: tell Grafana compose's."""
        prometheus = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
        scrape = prometheus["global"]["scrape_interval"]
        datasources = yaml.safe_load(
            (REPO / "deploy" / "compose" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
        )["datasources"]
        (ds,) = [d for d in datasources if d["type"] == "prometheus"]
        self.assertEqual(ds["jsonData"]["timeInterval"], scrape)


if __name__ == "__main__":
    unittest.main()
