"""Checks the Helm chart, docker-compose.yml and the Dockerfile against the real gateway.

The chart is linted and rendered by Helm's own engine (the Go SDK bundled in helm-python-sdk);
the rendered configuration is then handed to the real `roomcast-gateway` binary, which must boot
with it and answer the probes the chart points at. Run by scripts/test:

    python -m unittest discover -s deploy/tests -v

Needs: helm-python-sdk and PyYAML (deploy/tests/requirements.txt), a built gateway
(ROOMCAST_GATEWAY_BIN, default target/debug/roomcast-gateway) and redis-server on the PATH.
`haproxy -c` runs when haproxy is installed (scripts/test installs it where it can).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "roomcast"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
GATEWAY = Path(os.environ.get("ROOMCAST_GATEWAY_BIN", REPO / "target" / "debug" / "roomcast-gateway"))
RELEASE, NAMESPACE = "rc", "realtime"
FULLNAME = "rc-roomcast"
BOOT_DEADLINE = 60.0


# ---------------------------------------------------------------------------------------------
# Helpers


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict) -> dict[str, list[dict]]:
    """Renders the chart; returns manifests by kind (NOTES.txt under "NOTES")."""
    out = helm.Chart.load(str(CHART)).render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    by_kind: dict[str, list[dict]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            by_kind.setdefault("NOTES", []).append({"text": text})
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def one(manifests: dict, kind: str) -> dict:
    docs = manifests.get(kind, [])
    assert len(docs) == 1, f"expected one {kind}, got {len(docs)}"
    return docs[0]


def gateway_config(manifests: dict) -> dict[str, str]:
    """The gateway's ConfigMap (the dashboard may ship in another)."""
    return next(cm for cm in manifests["ConfigMap"] if cm["metadata"]["name"] == FULLNAME)["data"]


def gateway_container(manifests: dict) -> dict:
    containers = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


@cache
def gateway_help() -> str:
    if not GATEWAY.exists():
        raise unittest.SkipTest(f"{GATEWAY} is not built (cargo build -p roomcast-gateway)")
    return subprocess.run([GATEWAY, "--help"], check=True, capture_output=True, text=True).stdout


@cache
def gateway_env_vars() -> frozenset[str]:
    """Every environment variable the gateway reads, from its --help (the reference)."""
    names = frozenset(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", gateway_help()))
    assert len(names) > 20, "could not read env vars from --help"
    return names


def gateway_default(env: str) -> str:
    """The default value --help shows for an option, by its env var."""
    block = gateway_help().split(f"[env: {env}=")[1]
    match = re.search(r"\[default: ([^\]]+)\]", block.split("\n  -")[0])
    assert match, f"no default for {env}"
    return match.group(1)


@cache
def exported_metrics() -> frozenset[str]:
    """Metric names the gateway exports: metrics.rs defines every one of them."""
    source = (REPO / "gateway" / "src" / "metrics.rs").read_text()
    return frozenset(re.findall(r'pub const [A-Z_]+: &str = "(roomcast_[a-z_]+)"', source))


def metric_names_in(text: str) -> set[str]:
    names = set(re.findall(r"\b(roomcast_[a-z_]+)", text))
    # Histogram series carry suffixes the exporter adds.
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


class RedisServer:
    """A private redis-server on a free port, for the duration of a test class."""

    def __init__(self) -> None:
        if not shutil.which("redis-server"):
            raise unittest.SkipTest("redis-server is not installed")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def boot_gateway(
    env: dict[str, str], host: str = "127.0.0.1", public: int | None = None, admin: int | None = None
) -> tuple[subprocess.Popen, int]:
    """Starts the gateway with exactly `env` (plus PATH) and waits until /readyz answers 200.

    Listen addresses are moved to `host` and free (or the given) ports; everything else is used
    as given.
    """
    env = dict(env)
    public, admin = public or free_port(), admin or free_port()
    env["ROOMCAST_LISTEN"] = f"{host}:{public}"
    env["ROOMCAST_ADMIN_LISTEN"] = f"{host}:{admin}"
    env["PATH"] = os.environ.get("PATH", "")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([GATEWAY], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + BOOT_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"gateway exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            if http_status(f"http://{host}:{admin}/readyz") == 200:
                proc.log = log  # closed by stop_gateway
                return proc, admin
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    log.seek(0)
    raise AssertionError(f"gateway not ready within {BOOT_DEADLINE}s:\n{log.read().decode(errors='replace')}")


def stop_gateway(proc: subprocess.Popen) -> None:
    """Kills the gateway: its SIGTERM drain is the Rust suite's subject and takes seconds."""
    proc.kill()
    proc.wait()
    proc.log.close()


def container_env(manifests: dict) -> dict[str, str]:
    """The environment the gateway container would get: ConfigMap, then env (Secret refs resolved)."""
    container = gateway_container(manifests)
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in manifests.get("ConfigMap", [])}
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in manifests.get("Secret", [])}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{var['name']}: required key {ref['key']} missing from {ref['name']}"
            continue
        env[var["name"]] = value
    return env


# ---------------------------------------------------------------------------------------------
# The Helm chart


class ChartLint(unittest.TestCase):
    def test_lint_is_clean_on_every_ci_values_file(self) -> None:
        self.assertGreaterEqual(len(CI_VALUES), 3)
        for path in CI_VALUES:
            with self.subTest(values=path.name):
                result = helm.lint(str(CHART), load_values(path), strict=True, namespace=NAMESPACE)
                self.assertEqual(result["errors"], [])
                # Severity 1 is INFO (e.g. "icon is recommended"); warnings and errors fail.
                serious = [m for m in result["messages"] if m["severity"] >= 2]
                self.assertEqual(serious, [])

    def test_every_ci_values_file_renders(self) -> None:
        for path in CI_VALUES:
            with self.subTest(values=path.name):
                manifests = render(load_values(path))
                for kind in ["Deployment", "Service", "ConfigMap", "ServiceAccount", "Pod"]:
                    self.assertIn(kind, manifests)

    def test_values_yaml_documents_every_field(self) -> None:
        """Every value has a comment right above it or above one of its parent sections."""
        lines = (CHART / "values.yaml").read_text().splitlines()

        def commented(i: int) -> bool:
            return i > 0 and lines[i - 1].strip().startswith("#")

        def documented(i: int) -> bool:
            indent = len(lines[i]) - len(lines[i].lstrip())
            while True:
                if commented(i):
                    return True
                if indent == 0:
                    return False
                # Climb to the parent key (the nearest less-indented key line above).
                for j in range(i - 1, -1, -1):
                    line = lines[j]
                    own = len(line) - len(line.lstrip())
                    if line.strip() and not line.strip().startswith("#") and own < indent:
                        i, indent = j, own
                        break
                else:
                    return False

        checked = 0
        for i, line in enumerate(lines):
            stripped = line.strip()
            # Leaves only (a key with a value); sections are documented through their fields.
            if re.match(r"^[A-Za-z][\w.-]*: *\S", stripped):
                checked += 1
                with self.subTest(line=i + 1, field=stripped):
                    self.assertTrue(documented(i), line)
        self.assertGreater(checked, 70)


class ChartRejectsBadValues(unittest.TestCase):
    def test_schema_rejects_each_invalid_value(self) -> None:
        invalid = load_values(REPO / "deploy" / "tests" / "invalid-values.yaml")
        base = load_values(CHART / "ci" / "defaults-values.yaml")
        expected_paths = {
            "replicaCount": "/replicaCount",
            "unknownTopLevel": "additional properties 'unknownTopLevel'",
            "auth": "/auth/mode",
            "secrets": "/secrets/jwtSecret",
            "redis": "/redis/url",
            "config": "/config/history/ttl",
            "service": "/service/type",
        }
        self.assertEqual(set(invalid), set(expected_paths))
        # Each bad value alone is rejected, with a message naming it.
        for key, value in invalid.items():
            with self.subTest(field=key):
                values = copy.deepcopy(base)
                if isinstance(value, dict) and isinstance(values.get(key), dict):
                    values[key].update(value)
                else:
                    values[key] = value
                with self.assertRaises(helm.HelmValuesError) as ctx:
                    render(values)
                self.assertIn(expected_paths[key], str(ctx.exception))
        with self.assertRaises(helm.HelmValuesError) as ctx:
            render(invalid)
        self.assertIn("/secrets/apiKeys/0", str(ctx.exception))

    def test_install_fails_without_a_key(self) -> None:
        with self.assertRaisesRegex(helm.HelmRenderError, r"secrets\.jwtSecret"):
            render({})
        with self.assertRaisesRegex(helm.HelmRenderError, r"secrets\.jwks"):
            render({"auth": {"mode": "jwks"}, "redis": {"url": "redis://r:6379"}})

    def test_install_fails_with_replicas_but_no_redis(self) -> None:
        values = {"secrets": {"jwtSecret": "x" * 32}}
        with self.assertRaisesRegex(helm.HelmRenderError, "more than one replica needs redis.url"):
            render(values)
        with self.assertRaisesRegex(helm.HelmRenderError, "more than one replica needs redis.url"):
            render({**values, "replicaCount": 1, "autoscaling": {"enabled": True}})
        # One replica alone is the single-node mode: allowed, with a warning in NOTES.
        manifests = render({**values, "replicaCount": 1})
        self.assertIn("single-node mode", manifests["NOTES"][0]["text"])

    def test_install_fails_when_drain_does_not_fit_the_shutdown_timeout(self) -> None:
        values = load_values(CHART / "ci" / "defaults-values.yaml")
        values["shutdown"] = {"drainDelaySeconds": 30, "timeoutSeconds": 30}
        with self.assertRaisesRegex(helm.HelmRenderError, "drainDelaySeconds must be shorter"):
            render(values)


class ChartMatchesGateway(unittest.TestCase):
    """What the chart tells Kubernetes and the gateway must be what the gateway really does."""

    def test_env_names_are_gateway_options(self) -> None:
        for path in CI_VALUES:
            manifests = render(load_values(path))
            container = gateway_container(manifests)
            names = set(gateway_config(manifests)) | {e["name"] for e in container["env"]}
            with self.subTest(values=path.name):
                self.assertEqual(names - gateway_env_vars(), set())

    def test_probes_ports_and_scrape_target_match_the_gateway(self) -> None:
        for path in CI_VALUES:
            values = load_values(path)
            manifests = render(values)
            container = gateway_container(manifests)
            config = gateway_config(manifests)
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            with self.subTest(values=path.name):
                self.assertEqual(ports["public"], port_of(config["ROOMCAST_LISTEN"]))
                self.assertEqual(ports["admin"], port_of(config["ROOMCAST_ADMIN_LISTEN"]))
                self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "admin"})
                self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "admin"})
                service = one(manifests, "Service")
                self.assertEqual({p["targetPort"] for p in service["spec"]["ports"]}, set(ports))
                admin_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "admin")
                test_pod = one(manifests, "Pod")
                self.assertEqual(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test")
                self.assertIn(f"http://{FULLNAME}:{admin_port}/readyz", test_pod["spec"]["containers"][0]["args"])
                for monitor in manifests.get("ServiceMonitor", []):
                    self.assertEqual(monitor["spec"]["endpoints"][0]["port"], "admin")
                    self.assertEqual(monitor["spec"]["endpoints"][0]["path"], "/metrics")
                for ingress in manifests.get("Ingress", []):
                    for rule in ingress["spec"]["rules"]:
                        for p in rule["http"]["paths"]:
                            self.assertEqual(p["backend"]["service"]["port"], {"name": "public"})
        # The container ports default to the gateway's own defaults.
        manifests = render(load_values(CHART / "ci" / "defaults-values.yaml"))
        ports = {p["name"]: p["containerPort"] for p in gateway_container(manifests)["ports"]}
        self.assertEqual(ports["public"], port_of(gateway_default("ROOMCAST_LISTEN")))
        self.assertEqual(ports["admin"], port_of(gateway_default("ROOMCAST_ADMIN_LISTEN")))

    def test_rendered_configuration_boots_the_gateway_and_answers_the_probes(self) -> None:
        redis = RedisServer()
        self.addCleanup(redis.stop)
        for name in ["defaults-values.yaml", "full-values.yaml"]:
            manifests = render(load_values(CHART / "ci" / name))
            env = container_env(manifests)
            self.assertIn("ROOMCAST_JWT_SECRET", env)
            # The chart's Redis is not reachable here: point the same setting at a private one.
            self.assertIn("ROOMCAST_REDIS_URL", env)
            env["ROOMCAST_REDIS_URL"] = redis.url
            container = gateway_container(manifests)
            with self.subTest(values=name):
                proc, admin = boot_gateway(env)
                try:
                    for probe in ["livenessProbe", "readinessProbe"]:
                        path = container[probe]["httpGet"]["path"]
                        self.assertEqual(http_status(f"http://127.0.0.1:{admin}{path}"), 200, probe)
                    self.assertEqual(http_status(f"http://127.0.0.1:{admin}/metrics"), 200)
                    # What the grace period relies on: SIGTERM makes the replica unready at once
                    # (the drain delay then runs; it is not waited out here).
                    proc.terminate()
                    deadline = time.monotonic() + 10
                    while http_status(f"http://127.0.0.1:{admin}/readyz") != 503:
                        self.assertLess(time.monotonic(), deadline, "still ready after SIGTERM")
                        time.sleep(0.05)
                    self.assertIsNone(proc.poll(), "the replica drains instead of exiting")
                finally:
                    stop_gateway(proc)

    def test_alerts_and_dashboard_use_metrics_the_gateway_exports(self) -> None:
        manifests = render(load_values(CHART / "ci" / "full-values.yaml"))
        rules = one(manifests, "PrometheusRule")["spec"]["groups"][0]["rules"]
        self.assertGreaterEqual(len(rules), 4)
        used = set()
        for rule in rules:
            used |= metric_names_in(rule["expr"])
            # The job label must be the one the ServiceMonitor produces (the Service's name).
            for job in re.findall(r'job="([^"]+)"', rule["expr"]):
                self.assertEqual(job, one(manifests, "Service")["metadata"]["name"])
        self.assertEqual(used - exported_metrics(), set())
        dashboard_file = (CHART / "dashboards" / "roomcast.json").read_text()
        dashboard = json.loads(dashboard_file)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        self.assertGreaterEqual(len(exprs), 8)
        self.assertEqual(set().union(*map(metric_names_in, exprs)) - exported_metrics(), set())
        # The ConfigMap ships exactly the file in the repo.
        configmap = next(cm for cm in manifests["ConfigMap"] if "roomcast.json" in cm.get("data", {}))
        self.assertEqual(json.loads(configmap["data"]["roomcast.json"]), dashboard)
        self.assertEqual(configmap["metadata"]["labels"]["grafana_dashboard"], "1")

    def test_dashboard_is_what_its_generator_writes(self) -> None:
        result = subprocess.run(["python3", str(REPO / "deploy" / "tools" / "dashboard.py"), "--check"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_dashboard_covers_what_operators_watch(self) -> None:
        dashboard = json.loads((CHART / "dashboards" / "roomcast.json").read_text())
        text = json.dumps(dashboard)
        for metric in [
            "roomcast_connections",
            "roomcast_room_joins_total",
            "roomcast_room_leaves_total",
            "roomcast_client_events_total",
            "roomcast_events_emitted_total",
            "roomcast_delivery_latency_seconds",
            "roomcast_redis_errors_total",
        ]:
            self.assertIn(metric, text)
        self.assertIn("instance", text, "panels are broken down per replica")


class ChartSecrets(unittest.TestCase):
    def test_secrets_are_referenced_not_inlined(self) -> None:
        values = load_values(CHART / "ci" / "full-values.yaml")
        manifests = render(values)
        secret_values = [values["secrets"]["jwtSecret"], *values["secrets"]["apiKeys"], values["redis"]["url"]]
        for kind, docs in manifests.items():
            if kind == "Secret":
                continue
            text = yaml.safe_dump_all(docs)
            for value in secret_values:
                self.assertNotIn(value, text, f"a secret value appears in a {kind}")
        secret = one(manifests, "Secret")
        self.assertEqual(secret["metadata"]["name"], FULLNAME)
        self.assertEqual(secret["stringData"]["api-keys"], ",".join(values["secrets"]["apiKeys"]))
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway_container(manifests)["env"] if "valueFrom" in e
        }
        self.assertEqual(set(refs), {"ROOMCAST_JWT_SECRET", "ROOMCAST_API_KEY", "ROOMCAST_REDIS_URL"})
        for ref in refs.values():
            self.assertEqual(ref["name"], FULLNAME)
            self.assertIn(ref["key"], secret["stringData"])

    def test_existing_secret_is_used_and_none_is_created(self) -> None:
        manifests = render(load_values(CHART / "ci" / "existing-secret-values.yaml"))
        self.assertNotIn("Secret", manifests)
        container = gateway_container(manifests)
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        self.assertEqual({r["name"] for r in refs.values()}, {"roomcast-keys"})
        self.assertEqual(set(refs), {"ROOMCAST_API_KEY", "ROOMCAST_REDIS_URL"})
        # jwks mode: the document is mounted from the Secret and the env var points at it.
        jwks_file = next(e["value"] for e in container["env"] if e["name"] == "ROOMCAST_JWKS_FILE")
        mount = next(m for m in container["volumeMounts"] if m["name"] == "keys")
        volume = next(v for v in pod["volumes"] if v["name"] == "keys")
        self.assertEqual(volume["secret"]["secretName"], "roomcast-keys")
        self.assertEqual(jwks_file, f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}")
        self.assertEqual(volume["secret"]["items"][0]["key"], "jwks.json")
        self.assertTrue(mount["readOnly"])

    def test_secret_changes_roll_the_pods(self) -> None:
        values = load_values(CHART / "ci" / "defaults-values.yaml")
        before = one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        values["secrets"]["jwtSecret"] = "another-secret-0123456789abcdef0123456789"
        after = one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(before["checksum/config"], after["checksum/config"])
        self.assertNotEqual(before["checksum/secret"], after["checksum/secret"])
        values["config"] = {"logLevel": "debug"}
        changed = one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        self.assertNotEqual(after["checksum/config"], changed["checksum/config"])


class ChartOperations(unittest.TestCase):
    def test_termination_grace_covers_prestop_and_gateway_shutdown(self) -> None:
        cases = [
            ({}, 10, 40, 0),
            ({"shutdown": {"drainDelaySeconds": 15, "timeoutSeconds": 45, "preStopSleepSeconds": 5}}, 15, 45, 5),
            # An explicit grace shorter than needed is raised: the kubelet must not kill a drain.
            ({"shutdown": {"terminationGracePeriodSeconds": 10}}, 10, 40, 0),
            ({"shutdown": {"terminationGracePeriodSeconds": 120}}, 10, 40, 0),
        ]
        for extra, drain, timeout, pre_stop in cases:
            values = load_values(CHART / "ci" / "defaults-values.yaml") | extra
            manifests = render(values)
            pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
            config = gateway_config(manifests)
            container = gateway_container(manifests)
            with self.subTest(values=extra):
                self.assertEqual(config["ROOMCAST_DRAIN_DELAY"], f"{drain}s")
                self.assertEqual(config["ROOMCAST_SHUTDOWN_TIMEOUT"], f"{timeout}s")
                grace = pod["terminationGracePeriodSeconds"]
                self.assertGreaterEqual(grace, pre_stop + timeout + 5)
                explicit = extra.get("shutdown", {}).get("terminationGracePeriodSeconds")
                self.assertEqual(grace, max(explicit or 0, pre_stop + timeout + 5))
                if pre_stop:
                    self.assertEqual(container["lifecycle"]["preStop"], {"sleep": {"seconds": pre_stop}})
                else:
                    self.assertNotIn("lifecycle", container)

    def test_restricted_security_context(self) -> None:
        manifests = render(load_values(CHART / "ci" / "defaults-values.yaml"))
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        sc = gateway_container(manifests)["securityContext"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        self.assertFalse(pod["automountServiceAccountToken"])
        # The image's user (distroless nonroot) is the uid the chart runs as.
        self.assertIn("USER nonroot:nonroot", (REPO / "Dockerfile").read_text())
        self.assertEqual(pod["securityContext"]["runAsUser"], 65532)

    def test_image_tag_defaults_to_app_version(self) -> None:
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        manifests = render(load_values(CHART / "ci" / "defaults-values.yaml"))
        self.assertEqual(gateway_container(manifests)["image"], f"ghcr.io/roomcast/roomcast-gateway:{chart['appVersion']}")
        manifests = render(load_values(CHART / "ci" / "full-values.yaml"))
        self.assertTrue(gateway_container(manifests)["image"].endswith(":0.1.0-ci"))
        cargo = (REPO / "gateway" / "Cargo.toml").read_text()
        workspace = (REPO / "Cargo.toml").read_text()
        version = re.search(r'^version = "([^"]+)"', workspace + cargo, re.M).group(1)
        self.assertEqual(chart["appVersion"], version, "appVersion follows the gateway's version")

    def test_full_values_turn_everything_on(self) -> None:
        values = load_values(CHART / "ci" / "full-values.yaml")
        manifests = render(values)
        deployment = one(manifests, "Deployment")
        self.assertNotIn("replicas", deployment["spec"], "the HPA owns the replica count")
        hpa = one(manifests, "HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (3, 12))
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
        self.assertEqual({m["resource"]["name"] for m in hpa["spec"]["metrics"]}, {"cpu", "memory"})
        pdb = one(manifests, "PodDisruptionBudget")
        self.assertEqual(pdb["apiVersion"], "policy/v1")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"])
        ingress = one(manifests, "Ingress")
        annotations = ingress["metadata"]["annotations"]
        self.assertEqual(ingress["spec"]["ingressClassName"], "nginx")
        self.assertEqual(annotations["nginx.ingress.kubernetes.io/affinity"], "cookie")
        self.assertEqual(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600")
        self.assertEqual(ingress["spec"]["tls"], [{"hosts": ["realtime.example.com"], "secretName": "realtime-tls"}])
        monitor = one(manifests, "ServiceMonitor")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack")
        self.assertEqual(monitor["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"])
        pod = deployment["spec"]["template"]
        self.assertEqual(pod["metadata"]["annotations"]["example.com/team"], "realtime")
        self.assertEqual(pod["spec"]["topologySpreadConstraints"], values["topologySpreadConstraints"])
        self.assertIn("https://realtime.example.com", manifests["NOTES"][0]["text"])

    def test_chart_readme_documents_every_top_level_value(self) -> None:
        readme = (CHART / "README.md").read_text()
        for key in load_values(CHART / "values.yaml"):
            with self.subTest(key=key):
                self.assertIn(f"`{key}", readme)
        for topic in ["Redis Cluster", "Sentinel", "existingSecret", "helm test"]:
            self.assertIn(topic, readme)


# ---------------------------------------------------------------------------------------------
# docker-compose.yml and its load balancer


@cache
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def compose_gateways() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if name.startswith("gateway-")}


def env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def compose_env(service: dict) -> dict[str, str]:
    env = {}
    for f in service.get("env_file", []) if isinstance(service.get("env_file"), list) else [service["env_file"]]:
        env.update(env_file(REPO / f))
    env.update(service.get("environment", {}))
    return env


@cache
def haproxy_cfg() -> str:
    return (REPO / "deploy" / "compose" / "haproxy.cfg").read_text()


class Compose(unittest.TestCase):
    def test_three_named_replicas_behind_the_load_balancer(self) -> None:
        self.assertEqual(set(compose_gateways()), {"gateway-1", "gateway-2", "gateway-3"})
        servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)", haproxy_cfg(), re.M)
        self.assertEqual({host for _, host, _ in servers}, set(compose_gateways()))
        for name, svc in compose_gateways().items():
            env = compose_env(svc)
            port = next(int(p) for _, h, p in servers if h == name)
            with self.subTest(replica=name):
                self.assertEqual(port, port_of(env["ROOMCAST_LISTEN"]))
                self.assertTrue(env["ROOMCAST_REDIS_URL"].startswith("redis://redis:"))
                self.assertEqual(svc["depends_on"]["redis"]["condition"], "service_healthy")
        self.assertIn("healthcheck", compose()["services"]["redis"])

    def test_env_vars_are_gateway_options(self) -> None:
        for name, svc in compose_gateways().items():
            with self.subTest(replica=name):
                self.assertEqual(set(compose_env(svc)) - gateway_env_vars(), set())

    def test_env_file_says_change_me(self) -> None:
        text = (REPO / "deploy" / "compose" / "roomcast.env").read_text()
        self.assertIn("CHANGE ME", text)
        env = env_file(REPO / "deploy" / "compose" / "roomcast.env")
        self.assertGreaterEqual(len(env["ROOMCAST_JWT_SECRET"]), 32)

    def test_health_checks_and_scrapes_hit_the_admin_port(self) -> None:
        admin_ports = {port_of(compose_env(s)["ROOMCAST_ADMIN_LISTEN"]) for s in compose_gateways().values()}
        self.assertEqual(len(admin_ports), 1)
        (admin,) = admin_ports
        cfg = haproxy_cfg()
        self.assertRegex(cfg, r"option httpchk GET /readyz\b")
        self.assertRegex(cfg, rf"default-server check port {admin}\b")
        self.assertRegex(cfg, r"cookie \S+ insert", "long-polling clients are pinned by a cookie")
        tunnel = re.search(r"timeout tunnel (\d+)(h|m|s)", cfg)
        seconds = int(tunnel.group(1)) * {"h": 3600, "m": 60, "s": 1}[tunnel.group(2)]
        ping = gateway_default("ROOMCAST_PING_INTERVAL")
        self.assertGreater(seconds, int(ping.rstrip("s")) * 2, "idle WebSockets outlive several pings")
        prometheus = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
        job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "roomcast")
        self.assertEqual(job.get("metrics_path", "/metrics"), "/metrics")
        self.assertEqual(set(job["static_configs"][0]["targets"]), {f"{n}:{admin}" for n in compose_gateways()})

    def test_ports_are_published_on_loopback_only(self) -> None:
        published = [(name, p) for name, svc in compose()["services"].items() for p in svc.get("ports", [])]
        self.assertGreaterEqual(len(published), 3)
        for name, port in published:
            with self.subTest(service=name, port=port):
                self.assertTrue(str(port).startswith("127.0.0.1:"))

    def test_stop_grace_outlasts_the_gateway_shutdown(self) -> None:
        for name, svc in compose_gateways().items():
            timeout = compose_env(svc)["ROOMCAST_SHUTDOWN_TIMEOUT"]
            with self.subTest(replica=name):
                self.assertGreater(int(svc["stop_grace_period"].rstrip("s")), int(timeout.rstrip("s")))

    def test_mounted_files_exist(self) -> None:
        for name, svc in compose()["services"].items():
            for volume in svc.get("volumes", []):
                source = volume.split(":")[0]
                with self.subTest(service=name, volume=source):
                    self.assertTrue((REPO / source).exists())

    def test_replica_configuration_boots_the_gateway(self) -> None:
        redis = RedisServer()
        self.addCleanup(redis.stop)
        env = compose_env(compose_gateways()["gateway-1"])
        env["ROOMCAST_REDIS_URL"] = redis.url
        proc, admin = boot_gateway(env)
        try:
            self.assertEqual(http_status(f"http://127.0.0.1:{admin}/readyz"), 200)
        finally:
            stop_gateway(proc)

    def test_haproxy_accepts_the_configuration(self) -> None:
        haproxy = find_haproxy()
        # The replicas resolve through Docker's DNS at runtime (init-addr none), so the only
        # warnings allowed outside compose are about those names.
        result = subprocess.run([haproxy, "-c", "-f", str(REPO / "deploy" / "compose" / "haproxy.cfg")], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        warnings = [l for l in result.stderr.splitlines() if "WARNING" in l and "could not resolve address" not in l]
        self.assertEqual(warnings, [])

    def test_load_balancer_pins_polling_passes_websockets_and_skips_unready_replicas(self) -> None:
        """The committed haproxy.cfg, run for real in front of three real gateways.

        Only the addresses change: replica N listens on 127.0.0.(N+1) with the same two ports,
        as the compose replicas share ports on their own hosts.
        """
        haproxy = find_haproxy()
        redis = RedisServer()
        self.addCleanup(redis.stop)
        env = compose_env(compose_gateways()["gateway-1"]) | {"ROOMCAST_REDIS_URL": redis.url}
        public, admin, front, stats = free_port(), free_port(), free_port(), free_port()
        replicas = {}
        for n in (1, 2, 3):
            proc, _ = boot_gateway(env, host=f"127.0.0.{n + 1}", public=public, admin=admin)
            self.addCleanup(stop_gateway, proc)
            replicas[f"g{n}"] = proc
        cfg = haproxy_cfg()
        cfg = re.sub(r"server (gateway-(\d)) \S+", lambda m: f"server {m[1]} 127.0.0.{int(m[2]) + 1}:{public}", cfg)
        cfg = re.sub(r"check port \d+", f"check port {admin}", cfg)
        cfg = cfg.replace("bind :3000", f"bind 127.0.0.1:{front}").replace("bind :8404", f"bind 127.0.0.1:{stats}")
        cfg = re.sub(r"\n *log .*", "", cfg).replace("option httplog", "")
        # The container gets 262144 descriptors (docker-compose.yml); this machine may not.
        cfg = re.sub(r"maxconn \d+", "maxconn 1000", cfg)
        self.assertEqual(cfg.count(f"127.0.0.1:{front}"), 1)
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
            f.write(cfg)
        self.addCleanup(os.unlink, f.name)
        lb = subprocess.Popen([haproxy, "-f", f.name, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (lb.kill(), lb.wait()))
        base = f"http://127.0.0.1:{front}/socket.io/?EIO=4"
        wait_until(lambda: up_servers(stats) == {"gateway-1", "gateway-2", "gateway-3"}, "all replicas up in haproxy")

        token = subprocess.run(
            [GATEWAY, "--print-token", "demo/ada"],
            env={"ROOMCAST_JWT_SECRET": env["ROOMCAST_JWT_SECRET"]},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

        # Long-polling: the handshake sets the replica cookie; every later request of the
        # session carries it and reaches the replica that knows the session.
        seen = set()
        for _ in range(6):
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            body = opener.open(f"{base}&transport=polling", timeout=5).read().decode()
            sid = json.loads(body[1:])["sid"]
            url = f"{base}&transport=polling&sid={sid}"
            opener.open(urllib.request.Request(url, data=json.dumps({"token": token}).join(["40", ""]).encode()), timeout=5)
            # engineioxide queues its first ping as the session starts, so a poll may return that
            # ping alone before the CONNECT ack is queued: keep polling, as socket.io-client does.
            replies = []
            for _ in range(3):
                replies.append(opener.open(url, timeout=5).read().decode())
                if any(p.startswith("40{") for p in replies[-1].split("\x1e")):  # v4 payload separator
                    break
            else:
                self.fail(f"CONNECT not acknowledged: {replies!r}")
            jar = next(h.cookiejar for h in opener.handlers if isinstance(h, urllib.request.HTTPCookieProcessor))
            seen |= {c.value for c in jar if c.name == "roomcast_replica"}
        self.assertGreater(len(seen), 1, "leastconn spreads sessions over replicas")

        # WebSocket: the upgrade passes through.
        with socket.create_connection(("127.0.0.1", front), timeout=5) as ws:
            ws.sendall(
                f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{front}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            self.assertTrue(ws.recv(1024).startswith(b"HTTP/1.1 101"))

        # A draining replica (SIGTERM: /readyz 503) leaves the rotation.
        replicas["g1"].terminate()
        wait_until(lambda: up_servers(stats) == {"gateway-2", "gateway-3"}, "gateway-1 taken out after SIGTERM")


def find_haproxy() -> str:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if not haproxy:
        raise unittest.SkipTest("haproxy is not installed (scripts/test installs it with apt when it can)")
    return haproxy


def up_servers(stats_port: int) -> set[str]:
    """Servers HAProxy currently sends traffic to, from its stats CSV."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/;csv", timeout=2) as resp:
            rows = resp.read().decode().splitlines()
    except OSError:
        return set()
    header = rows[0].lstrip("# ").split(",")
    up = set()
    for row in rows[1:]:
        fields = dict(zip(header, row.split(",")))
        if fields.get("pxname") == "gateways" and fields.get("svname", "").startswith("gateway-"):
            if fields.get("status") == "UP":
                up.add(fields["svname"])
    return up


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Dockerfile


class Dockerfile(unittest.TestCase):
    def test_image_matches_the_gateway(self) -> None:
        text = (REPO / "Dockerfile").read_text()
        exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
        self.assertEqual(
            exposed, {port_of(gateway_default("ROOMCAST_LISTEN")), port_of(gateway_default("ROOMCAST_ADMIN_LISTEN"))}
        )
        self.assertRegex(text, r"(?m)^STOPSIGNAL SIGTERM$")
        self.assertRegex(text, r"(?m)^USER nonroot")
        self.assertIn("--locked", text)
        for var in re.findall(r"^ENV (\w+)=", text, re.M):
            self.assertIn(var, gateway_env_vars())

    def test_copied_paths_exist_and_are_not_ignored(self) -> None:
        text = (REPO / "Dockerfile").read_text()
        ignored = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
            *sources, _dest = line.split()
            for source in sources:
                with self.subTest(source=source):
                    self.assertTrue((REPO / source).exists())
                    self.assertNotIn(source.split("/")[0], ignored)
        # Workspace members must all be present for `cargo build --locked` to load the workspace.
        members = re.search(r"members = \[([^\]]*)\]", (REPO / "Cargo.toml").read_text()).group(1)
        for member in re.findall(r'"([^"]+)"', members):
            self.assertIn(f"COPY {member}/Cargo.toml", text)
        # So must the patched crates [patch.crates-io] points at (vendor/PATCHES.md).
        patched = re.findall(r'path = "(vendor/[^"]+)"', (REPO / "Cargo.toml").read_text())
        self.assertTrue(patched)
        for path in patched:
            self.assertIn(f"COPY {path} {path}", text)


if __name__ == "__main__":
    unittest.main()
