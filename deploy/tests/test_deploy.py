"""Checks the Helm chart, docker-compose.yml and the Dockerfile against the real gateway.

The chart is linted and rendered by Helm's own engine (the Go SDK bundled in helm-python-sdk);
every rendered manifest is validated against Kubernetes' own OpenAPI schemas
(kubernetes-validate, strict); the rendered configuration, with the files the pod would have
mounted, is then handed to the real `roomcast-gateway` binary, which must boot with it and
answer the probes the chart points at. Run by scripts/test:

    python -m unittest discover -s deploy/tests -v

Needs: helm-python-sdk, kubernetes-validate and PyYAML (deploy/tests/requirements.txt), a built
gateway (ROOMCAST_GATEWAY_BIN, default target/debug/roomcast-gateway) and redis-server on the
PATH. `haproxy -c` runs when haproxy is installed (scripts/test installs it where it can).
"""

from __future__ import annotations

import copy
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml
from helm_python import _native as helm_native

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "roomcast"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
GATEWAY = Path(os.environ.get("ROOMCAST_GATEWAY_BIN", REPO / "target" / "debug" / "roomcast-gateway"))
RELAY = Path(os.environ.get("ROOMCAST_RELAY_BIN", REPO / "target" / "debug" / "roomcast-relay"))
RELEASE, NAMESPACE = "rc", "realtime"
FULLNAME = "rc-roomcast"
BOOT_DEADLINE = 60.0


# ---------------------------------------------------------------------------------------------
# Helpers


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict, kube_version: str | None = None) -> dict[str, list[dict]]:
    """Renders the chart; returns manifests by kind (NOTES.txt under "NOTES").

    `kube_version` sets .Capabilities.KubeVersion, as `helm template --kube-version` does (the
    SDK's native render takes it; its Python wrapper does not expose it yet).
    """
    chart = helm.Chart.load(str(CHART))
    if kube_version is None:
        out = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    else:
        opts = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": kube_version}
        out = json.loads(helm_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))
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
    """The gateway container (of the one Deployment that has one: the relay's is another)."""
    return next(
        c for d in manifests["Deployment"] for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"
    )


def pod_spec(manifests: dict) -> dict:
    return one(manifests, "Deployment")["spec"]["template"]["spec"]


def named(manifests: dict, kind: str, name: str) -> dict:
    docs = [d for d in manifests.get(kind, []) if d["metadata"]["name"] == name]
    assert len(docs) == 1, f"expected one {kind} {name}, got {len(docs)}"
    return docs[0]


def public_service(manifests: dict) -> dict:
    """The Service clients reach (Socket.IO) and Prometheus scrapes (admin)."""
    return named(manifests, "Service", FULLNAME)


def api_service(manifests: dict) -> dict:
    """The backend API's own Service."""
    return named(manifests, "Service", f"{FULLNAME}-api")


def env_value(container: dict, name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def merged(base: dict, extra: dict) -> dict:
    """`base` with `extra` merged in, maps recursively (as Helm merges values)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@cache
def relay_help() -> str:
    if not RELAY.exists():
        raise unittest.SkipTest(f"{RELAY} is not built (cargo build -p roomcast-relay)")
    return subprocess.run([RELAY, "--help"], check=True, capture_output=True, text=True).stdout


def relay_env_vars() -> frozenset[str]:
    """Every environment variable the relay reads, from its --help."""
    names = frozenset(re.findall(r"\[env:\s+([A-Z0-9_]+)[=\]]", relay_help()))
    assert len(names) > 10, "could not read env vars from --help"
    return names


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
    env: dict[str, str],
    host: str = "127.0.0.1",
    public: int | None = None,
    admin: int | None = None,
    api: int | None = None,
) -> tuple[subprocess.Popen, int]:
    """Starts the gateway with exactly `env` (plus PATH) and waits until /readyz answers 200.

    Listen addresses are moved to `host` and free (or the given) ports; everything else is used
    as given. The API listener is set too (a binary without it ignores the variable). The ports
    used are in `proc.ports` ("public", "admin", "api").

    A free port is only free when it is picked: the gateway's own connections (to Redis, before
    it listens) take ports from the same ephemeral range, and once took the API port it was
    about to listen on. So a boot that fails with "Address already in use" is tried again on
    fresh ports, for the ports this function picked.
    """
    given = {"public": public, "admin": admin, "api": api}
    for attempt in range(3):
        ports = {name: port or free_port() for name, port in given.items()}
        try:
            return _boot_gateway_once(env, host, ports)
        except AddressInUse:
            if attempt == 2 or all(given.values()):
                raise
    raise AssertionError("unreachable")


class AddressInUse(AssertionError):
    """The gateway could not listen: a picked port was taken meanwhile."""


def _boot_gateway_once(env: dict[str, str], host: str, ports: dict[str, int]) -> tuple[subprocess.Popen, int]:
    env = dict(env)
    public, admin, api = ports["public"], ports["admin"], ports["api"]
    env["ROOMCAST_LISTEN"] = f"{host}:{public}"
    env["ROOMCAST_ADMIN_LISTEN"] = f"{host}:{admin}"
    env["ROOMCAST_API_LISTEN"] = f"{host}:{api}"
    env["PATH"] = os.environ.get("PATH", "")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([GATEWAY], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + BOOT_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            text = log.read().decode(errors="replace")
            log.close()
            error = AddressInUse if "Address already in use" in text else AssertionError
            raise error(f"gateway exited with {proc.returncode}:\n{text}")
        try:
            if http_status(f"http://{host}:{admin}/readyz") == 200:
                proc.log = log  # closed by stop_gateway
                proc.ports = ports
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


def container_env(manifests: dict, root: Path | None = None) -> dict[str, str]:
    """The environment the gateway container would get: ConfigMap, then env (Secret refs resolved).

    With `root`, the files of the container's Secret and ConfigMap volumes are written under it
    (see pod_files) and every variable pointing into a mount points at its copy instead.
    """
    container = gateway_container(manifests)
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in manifests.get("ConfigMap", [])}
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in manifests.get("Secret", [])}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if source.get("configMapRef", {}).get("name") not in configmaps:
            continue  # the user's own (extraEnvFrom)
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
    if root is not None:
        mounts = pod_files(manifests, root)
        for name, value in env.items():
            for mount_path, copy_path in mounts.items():
                if value.startswith(mount_path + "/"):
                    env[name] = str(copy_path) + value[len(mount_path) :]
    return env


def pod_files(manifests: dict, root: Path) -> dict[str, Path]:
    """Writes what the gateway container's Secret and ConfigMap volumes would hold under `root`.

    Only objects the chart renders are known; volumes of others (existingSecret, extraVolumes)
    are left out. Returns {mountPath: its copy under root}.
    """
    pod = pod_spec(manifests)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in manifests.get("ConfigMap", [])}
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in manifests.get("Secret", [])}
    copies = {}
    for mount in gateway_container(manifests).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            source, data = volume["secret"], secrets.get(volume["secret"]["secretName"])
        elif "configMap" in volume:
            source, data = volume["configMap"], configmaps.get(volume["configMap"]["name"])
        else:
            continue
        if data is None:
            continue
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (target / item["path"]).write_text(data[item["key"]])
        copies[mount["mountPath"]] = target
    return copies


def redis_clients(port: int) -> int:
    """Clients connected to the test Redis, this query's own connection excluded."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"CLIENT LIST\r\n")
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        header, _, body = data.partition(b"\r\n")
        size = int(header[1:])  # a bulk string: $<size>\r\n<body>\r\n
        while len(body) < size:
            body += s.recv(65536)
    return body.decode().count("id=") - 1


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
            "replicaCount": ["/replicaCount"],
            "unknownTopLevel": ["additional properties 'unknownTopLevel'"],
            "image": ["/image/digest"],
            "auth": [
                "/auth/mode",
                "/auth/jwksUrl",
                "at '/auth/trustedIssuers/0': missing properties 'issuer', 'tenants'",
                "at '/auth/trustedIssuers/1': additional properties 'jwks_url'",
                "/auth/trustedIssuers/2/jwksUrl",
                "/auth/trustedIssuers/2/tenants",
            ],
            "secrets": [
                "/secrets/jwtSecret",
                "/secrets/webhookSecret",
                "/secrets/rpcSecret",
                "/secrets/existingSecretKeys/apiKeys",
                "/secrets/existingSecretKeys/tenantApiKeys",
                "/secrets/tenantApiKeys/0/key",
                "/secrets/tenantApiKeys/1/tenants",
                "/secrets/tenantApiKeys/2/tenants/0",
                "at '/secrets/tenantApiKeys/3': additional properties 'scope'",
                "/secrets/consoleTokens/0",
                "/secrets/consoleTokens/1",
            ],
            "redis": ["/redis/url", "/redis/existingPasswordSecret/key"],
            "config": [
                "/config/history/ttl",
                "/config/events/types/0",
                "/config/events/webhook/urls/0",
                "/config/events/webhook/batchSize",
                "/config/backend/rpc/events/0",
                "/config/backend/connectProxy/failure",
            ],
            "service": ["/service/type", "/service/externalTrafficPolicy", "/service/nodePorts/public"],
            "containerPorts": ["/containerPorts/api"],
            "api": ["/api/publicListener", "/api/service/type"],
            "strategy": ["/strategy/type"],
            "podDisruptionBudget": ["/podDisruptionBudget/minAvailable"],
            "probes": ["/probes/liveness/successThreshold", "/probes/startup/failureThreshold"],
            "httpRoute": ["/httpRoute/timeouts/request", "/httpRoute/timeouts/backendRequest"],
            "serviceMonitor": ["/serviceMonitor/namespace"],
            "networkPolicy": ["/networkPolicy/api/namespaces/0"],
            "autoscaling": ["/autoscaling/targetConnectionsPerPod"],
            "dnsPolicy": ["/dnsPolicy"],
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
                for path in expected_paths[key]:
                    self.assertIn(path, str(ctx.exception))
        with self.assertRaises(helm.HelmValuesError) as ctx:
            render(invalid)
        self.assertIn("/secrets/apiKeys/0", str(ctx.exception))

    def test_conflicting_settings_fail_with_a_message_naming_them(self) -> None:
        cases = yaml.safe_load((REPO / "deploy" / "tests" / "invalid-combinations.yaml").read_text())
        base = load_values(CHART / "ci" / "defaults-values.yaml")
        self.assertGreaterEqual(len(cases), 15)
        for case in cases:
            with self.subTest(case=case["name"]):
                values = merged(base, case["values"])
                # Each is valid for the schema: the conflict is what is refused.
                helm.Chart.load(str(CHART)).validate_schema(values)
                with self.assertRaisesRegex(helm.HelmRenderError, case["error"]):
                    render(values)

    def test_prestop_sleep_is_refused_before_kubernetes_1_30(self) -> None:
        values = load_values(CHART / "ci" / "defaults-values.yaml") | {"shutdown": {"preStopSleepSeconds": 5}}
        with self.assertRaisesRegex(helm.HelmRenderError, r"preStopSleepSeconds needs Kubernetes >= 1\.30"):
            render(values, kube_version="v1.29.0")
        sleep = gateway_container(render(values, kube_version="v1.30.0"))["lifecycle"]["preStop"]
        self.assertEqual(sleep, {"sleep": {"seconds": 5}})

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
                self.assertEqual(ports["api"], port_of(config["ROOMCAST_API_LISTEN"]))
                self.assertEqual(ports["admin"], port_of(config["ROOMCAST_ADMIN_LISTEN"]))
                self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "admin"})
                self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "admin"})
                service = public_service(manifests)
                self.assertEqual({p["targetPort"] for p in service["spec"]["ports"]}, {"public", "admin"})
                self.assertEqual([p["targetPort"] for p in api_service(manifests)["spec"]["ports"]], ["api"])
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
        self.assertEqual(ports["api"], port_of(gateway_default("ROOMCAST_API_LISTEN")))

    def test_rendered_configuration_boots_the_gateway_and_answers_the_probes(self) -> None:
        """The chart's ConfigMap, env and mounted files, handed to the real binary."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        for name in ["defaults-values.yaml", "full-values.yaml"]:
            manifests = render(load_values(CHART / "ci" / name))
            root = Path(tempfile.mkdtemp())
            self.addCleanup(shutil.rmtree, root)
            env = container_env(manifests, root)
            # Keys and the Redis URL are files; nothing secret is in the environment.
            self.assertTrue(Path(env["ROOMCAST_JWT_SECRET_FILE"]).is_file())
            self.assertNotIn("ROOMCAST_JWT_SECRET", env)
            self.assertNotIn("ROOMCAST_REDIS_URL", env)
            # The chart's Redis is not reachable here: the same file, pointing at a private one.
            Path(env["ROOMCAST_REDIS_URL_FILE"]).write_text(redis.url)
            container = gateway_container(manifests)
            with self.subTest(values=name):
                before = redis_clients(redis.port)
                proc, admin = boot_gateway(env)
                try:
                    for probe in ["livenessProbe", "readinessProbe"]:
                        path = container[probe]["httpGet"]["path"]
                        self.assertEqual(http_status(f"http://127.0.0.1:{admin}{path}"), 200, probe)
                    self.assertEqual(http_status(f"http://127.0.0.1:{admin}/metrics"), 200)
                    # full-values sets console tokens: the console is on; by default it is off.
                    console = 200 if name == "full-values.yaml" else 404
                    self.assertEqual(http_status(f"http://127.0.0.1:{admin}/console"), console)
                    self.assertGreater(redis_clients(redis.port), before, "the replica uses the Redis of the mounted URL file")
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

    def test_api_port_serves_the_backend_api_and_the_public_port_does_not(self) -> None:
        redis = RedisServer()
        self.addCleanup(redis.stop)
        values = load_values(CHART / "ci" / "full-values.yaml")
        body = json.dumps({"tenant": "demo", "channel": "general", "event": "hello", "data": {}}).encode()
        for public_api in [False, True]:
            values["api"] = {"publicListener": public_api}
            manifests = render(values)
            root = Path(tempfile.mkdtemp())
            self.addCleanup(shutil.rmtree, root)
            env = container_env(manifests, root)
            Path(env["ROOMCAST_REDIS_URL_FILE"]).write_text(redis.url)
            key = Path(env["ROOMCAST_API_KEY_FILE"]).read_text().splitlines()[0]
            with self.subTest(publicListener=public_api):
                proc, _ = boot_gateway(env)
                public, api = proc.ports["public"], proc.ports["api"]
                try:

                    def publish(port: int) -> int:
                        request = urllib.request.Request(
                            f"http://127.0.0.1:{port}/v1/publish",
                            data=body,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                        )
                        try:
                            with urllib.request.urlopen(request, timeout=5) as resp:
                                return resp.status
                        except urllib.error.HTTPError as e:
                            return e.code

                    self.assertEqual(publish(api), 200)
                    self.assertEqual(http_status(f"http://127.0.0.1:{api}/openapi.json"), 200)
                    self.assertEqual(publish(public), 200 if public_api else 404)
                finally:
                    stop_gateway(proc)

    def test_rendered_tenant_keys_file_boots_the_gateway_and_scopes_its_keys(self) -> None:
        """secrets.tenantApiKeys, rendered and mounted: each key publishes for its tenants only."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        acme = {"key": "acme-backend-key-0123456789", "tenants": ["acme", "acme-eu"]}
        admin = "admin-api-key-0123456789"
        cases = {
            # Tenant keys alone enable the backend API.
            "tenant keys only": {"secrets": {"tenantApiKeys": [acme]}},
            "beside keys of every tenant": {"secrets": {"apiKeys": [admin], "tenantApiKeys": [acme]}},
        }
        for name, extra in cases.items():
            manifests = render(merged(load_values(CHART / "ci" / "defaults-values.yaml"), extra))
            self.assertNotIn("no API keys are configured", manifests["NOTES"][0]["text"])
            root = Path(tempfile.mkdtemp())
            self.addCleanup(shutil.rmtree, root)
            env = container_env(manifests, root)
            self.assertEqual(json.loads(Path(env["ROOMCAST_TENANT_API_KEYS_FILE"]).read_text()), {"keys": [acme]})
            self.assertEqual("ROOMCAST_API_KEY_FILE" in env, "apiKeys" in extra["secrets"])
            Path(env["ROOMCAST_REDIS_URL_FILE"]).write_text(redis.url)
            with self.subTest(case=name):
                proc, _ = boot_gateway(env)
                api = proc.ports["api"]
                try:

                    def publish(key: str, tenant: str) -> int:
                        body = json.dumps({"tenant": tenant, "channel": "general", "event": "hello", "data": {}}).encode()
                        request = urllib.request.Request(
                            f"http://127.0.0.1:{api}/v1/publish",
                            data=body,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                        )
                        try:
                            with urllib.request.urlopen(request, timeout=5) as resp:
                                return resp.status
                        except urllib.error.HTTPError as e:
                            return e.code

                    self.assertEqual(publish(acme["key"], "acme"), 200)
                    self.assertEqual(publish(acme["key"], "acme-eu"), 200)
                    self.assertEqual(publish(acme["key"], "globex"), 403)
                    self.assertEqual(publish("not-a-key-0123456789", "acme"), 401)
                    if "apiKeys" in extra["secrets"]:
                        self.assertEqual(publish(admin, "globex"), 200)
                finally:
                    stop_gateway(proc)

    def test_trusted_issuers_file_boots_the_gateway(self) -> None:
        fixtures = REPO / "gateway" / "tests" / "fixtures"
        values = merged(
            load_values(CHART / "ci" / "defaults-values.yaml"),
            {
                "replicaCount": 1,
                "redis": {"url": ""},
                "auth": {
                    "mode": "issuers",
                    "trustedIssuers": [
                        {"issuer": "https://a.example/", "jwksFile": "/etc/roomcast/idp/jwks.json", "tenants": ["acme"]},
                        {"issuer": "https://b.example/", "publicKeyFile": "/etc/roomcast/idp/ed-public.pem", "tenants": ["*"]},
                    ],
                },
            },
        )
        manifests = render(values)
        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root)
        env = container_env(manifests, root)
        issuers_file = Path(env["ROOMCAST_JWT_ISSUERS_FILE"])
        # The key files would come from extraVolumes: point the rendered document at the fixtures.
        issuers_file.write_text(issuers_file.read_text().replace("/etc/roomcast/idp", str(fixtures)))
        proc, admin = boot_gateway(env)
        try:
            self.assertEqual(http_status(f"http://127.0.0.1:{admin}/readyz"), 200)
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
                self.assertEqual(job, public_service(manifests)["metadata"]["name"])
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


def secret_mounts(manifests: dict) -> dict[str, tuple[dict, dict]]:
    """{env var: (its volume, its mount)} for every ROOMCAST_*_FILE variable of the gateway."""
    container = gateway_container(manifests)
    volumes = {v["name"]: v for v in pod_spec(manifests).get("volumes", [])}
    out = {}
    for var in container.get("env", []):
        if not var["name"].endswith("_FILE"):
            continue
        mount = next(m for m in container["volumeMounts"] if var["value"].startswith(m["mountPath"] + "/"))
        out[var["name"]] = (volumes[mount["name"]], mount)
    return out


def mounted_item(volume: dict, mount: dict, path: str) -> str:
    """The Secret or ConfigMap key a file path in the container comes from."""
    source = volume.get("secret") or volume.get("configMap")
    file = path[len(mount["mountPath"]) + 1 :]
    return next(i["key"] for i in source["items"] if i["path"] == file) if "items" in source else file


class ChartSecrets(unittest.TestCase):
    def test_secrets_are_mounted_files_never_env(self) -> None:
        values = load_values(CHART / "ci" / "full-values.yaml")
        manifests = render(values)
        secret_values = [
            values["secrets"]["jwtSecret"],
            *values["secrets"]["apiKeys"],
            values["redis"]["url"],
            values["secrets"]["webhookSecret"],
            values["secrets"]["rpcSecret"],
            *values["secrets"]["consoleTokens"],
        ]
        for kind, docs in manifests.items():
            if kind == "Secret":
                continue
            text = yaml.safe_dump_all(docs)
            for value in secret_values:
                self.assertNotIn(value, text, f"a secret value appears in a {kind}")
        secret = one(manifests, "Secret")
        self.assertEqual(secret["metadata"]["name"], FULLNAME)
        # One key per line: what ROOMCAST_API_KEY_FILE reads.
        self.assertEqual(secret["stringData"]["api-keys"].splitlines(), values["secrets"]["apiKeys"])
        self.assertEqual(secret["stringData"]["console-tokens"].splitlines(), values["secrets"]["consoleTokens"])
        container = gateway_container(manifests)
        self.assertEqual([e for e in container["env"] if "valueFrom" in e], [], "no secretKeyRef in env")
        mounts = secret_mounts(manifests)
        expected_keys = {
            "ROOMCAST_JWT_SECRET_FILE": "jwt-secret",
            "ROOMCAST_API_KEY_FILE": "api-keys",
            "ROOMCAST_REDIS_URL_FILE": "redis-url",
            "ROOMCAST_WEBHOOK_SECRET_FILE": "webhook-secret",
            "ROOMCAST_RPC_SECRET_FILE": "rpc-secret",
            "ROOMCAST_CONSOLE_TOKENS_FILE": "console-tokens",
        }
        self.assertEqual(set(mounts), set(expected_keys))
        for var, (volume, mount) in mounts.items():
            with self.subTest(var=var):
                self.assertEqual(volume["secret"]["secretName"], FULLNAME)
                self.assertEqual(volume["secret"]["defaultMode"], 0o440)
                self.assertTrue(mount["readOnly"])
                key = mounted_item(volume, mount, env_value(container, var))
                self.assertEqual(key, expected_keys[var])
                self.assertIn(key, secret["stringData"])
        # Without an fsGroup to own the files, 0440 would leave them unreadable to the non-root gateway.
        values["podSecurityContext"] = {"fsGroup": None}  # null removes the default, as in helm --set
        volume = next(v for v in pod_spec(render(values))["volumes"] if v["name"] == "secrets")
        self.assertEqual(volume["secret"]["defaultMode"], 0o444)
        # The rendered files are what the gateway gets: the materialized copies hold the values.
        root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, root)
        env = container_env(manifests, root)
        self.assertEqual(Path(env["ROOMCAST_REDIS_URL_FILE"]).read_text(), values["redis"]["url"])
        self.assertEqual(Path(env["ROOMCAST_JWT_SECRET_FILE"]).read_text(), values["secrets"]["jwtSecret"])

    def test_existing_secret_is_used_and_none_is_created(self) -> None:
        manifests = render(load_values(CHART / "ci" / "existing-secret-values.yaml"))
        self.assertNotIn("Secret", manifests)
        container = gateway_container(manifests)
        self.assertEqual([e for e in container["env"] if "valueFrom" in e], [])
        mounts = secret_mounts(manifests)
        # jwks mode: the document, the API keys and the Redis URL are files from the Secret.
        self.assertEqual(set(mounts), {"ROOMCAST_JWKS_FILE", "ROOMCAST_API_KEY_FILE", "ROOMCAST_REDIS_URL_FILE"})
        for var, (volume, mount) in mounts.items():
            with self.subTest(var=var):
                self.assertEqual(volume["secret"]["secretName"], "roomcast-keys")
                self.assertTrue(mount["readOnly"])
        volume, mount = mounts["ROOMCAST_JWKS_FILE"]
        self.assertEqual(mounted_item(volume, mount, env_value(container, "ROOMCAST_JWKS_FILE")), "jwks.json")

    def test_existing_secret_key_names_and_optional_keys(self) -> None:
        values = merged(
            load_values(CHART / "ci" / "existing-secret-values.yaml"),
            {"auth": {"mode": "hmac"}, "secrets": {"existingSecretKeys": {"jwtSecret": "token-key", "apiKeys": "", "redisUrl": "url"}}},
        )
        manifests = render(values)
        container = gateway_container(manifests)
        mounts = secret_mounts(manifests)
        # A key declared absent is not mounted (a named but missing one would keep the pod from starting).
        self.assertEqual(set(mounts), {"ROOMCAST_JWT_SECRET_FILE", "ROOMCAST_REDIS_URL_FILE"})
        for var, key in [("ROOMCAST_JWT_SECRET_FILE", "token-key"), ("ROOMCAST_REDIS_URL_FILE", "url")]:
            volume, mount = mounts[var]
            self.assertEqual(mounted_item(volume, mount, env_value(container, var)), key)
        self.assertIn("no API keys are configured", manifests["NOTES"][0]["text"])

    def test_tenant_api_keys_are_a_mounted_json_file(self) -> None:
        values = merged(
            load_values(CHART / "ci" / "defaults-values.yaml"),
            {
                "secrets": {
                    "apiKeys": ["admin-api-key-0123456789"],
                    "tenantApiKeys": [
                        {"key": "acme-backend-key-0123456789", "tenants": ["acme"]},
                        {"key": "globex-backend-key-0123456789", "tenants": ["globex", "globex-eu"]},
                    ],
                }
            },
        )
        manifests = render(values)
        secret = one(manifests, "Secret")
        # The format of ROOMCAST_TENANT_API_KEYS_FILE, and nothing else (the gateway refuses unknown fields).
        self.assertEqual(json.loads(secret["stringData"]["tenant-api-keys.json"]), {"keys": values["secrets"]["tenantApiKeys"]})
        self.assertEqual(secret["stringData"]["api-keys"].splitlines(), values["secrets"]["apiKeys"])
        for kind, docs in manifests.items():
            if kind != "Secret":
                for entry in values["secrets"]["tenantApiKeys"]:
                    self.assertNotIn(entry["key"], yaml.safe_dump_all(docs), f"a tenant key appears in a {kind}")
        container = gateway_container(manifests)
        mounts = secret_mounts(manifests)
        self.assertEqual(
            set(mounts),
            {"ROOMCAST_JWT_SECRET_FILE", "ROOMCAST_API_KEY_FILE", "ROOMCAST_TENANT_API_KEYS_FILE", "ROOMCAST_REDIS_URL_FILE"},
        )
        self.assertEqual(env_value(container, "ROOMCAST_TENANT_API_KEYS_FILE"), "/etc/roomcast/secrets/tenant-api-keys.json")
        volume, mount = mounts["ROOMCAST_TENANT_API_KEYS_FILE"]
        # With the other secret files: the same volume of the chart's Secret, read-only, 0440.
        self.assertEqual(volume["name"], "secrets")
        self.assertEqual(volume["secret"]["secretName"], FULLNAME)
        self.assertEqual(volume["secret"]["defaultMode"], 0o440)
        self.assertTrue(mount["readOnly"])
        self.assertEqual(mounted_item(volume, mount, env_value(container, "ROOMCAST_TENANT_API_KEYS_FILE")), "tenant-api-keys.json")
        # A changed tenant key rolls the pods.
        before = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        values["secrets"]["tenantApiKeys"][0]["tenants"].append("acme-eu")
        after = one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        self.assertNotEqual(before["checksum/secret"], after["checksum/secret"])
        # Without tenant keys: no file, no variable.
        manifests = render(load_values(CHART / "ci" / "defaults-values.yaml"))
        self.assertNotIn("tenant-api-keys.json", one(manifests, "Secret")["stringData"])
        self.assertIsNone(env_value(gateway_container(manifests), "ROOMCAST_TENANT_API_KEYS_FILE"))
        # A refused key is named by its index, never by its value (it is a secret).
        values["secrets"]["tenantApiKeys"][1]["key"] = "admin-api-key-0123456789"
        with self.assertRaisesRegex(helm.HelmRenderError, r"secrets\.tenantApiKeys\[1\]\.key is also one of secrets\.apiKeys") as ctx:
            render(values)
        self.assertNotIn("admin-api-key-0123456789", str(ctx.exception))

    def test_existing_secret_tenant_api_keys(self) -> None:
        base = load_values(CHART / "ci" / "existing-secret-values.yaml")
        # Default "": the existing Secret has no tenant keys, and nothing is mounted for them.
        manifests = render(base)
        self.assertNotIn("ROOMCAST_TENANT_API_KEYS_FILE", secret_mounts(manifests))
        # Named: its key is mounted as tenant-api-keys.json, beside the others.
        manifests = render(merged(base, {"secrets": {"existingSecretKeys": {"tenantApiKeys": "tenant-keys"}}}))
        self.assertNotIn("Secret", manifests)
        container = gateway_container(manifests)
        mounts = secret_mounts(manifests)
        self.assertEqual(
            set(mounts),
            {"ROOMCAST_JWKS_FILE", "ROOMCAST_API_KEY_FILE", "ROOMCAST_TENANT_API_KEYS_FILE", "ROOMCAST_REDIS_URL_FILE"},
        )
        volume, mount = mounts["ROOMCAST_TENANT_API_KEYS_FILE"]
        self.assertEqual(volume["secret"]["secretName"], "roomcast-keys")
        self.assertTrue(mount["readOnly"])
        self.assertEqual(env_value(container, "ROOMCAST_TENANT_API_KEYS_FILE"), "/etc/roomcast/secrets/tenant-api-keys.json")
        self.assertEqual(mounted_item(volume, mount, env_value(container, "ROOMCAST_TENANT_API_KEYS_FILE")), "tenant-keys")
        # Tenant keys alone (no apiKeys in the Secret) enable the API.
        manifests = render(merged(base, {"secrets": {"existingSecretKeys": {"apiKeys": "", "tenantApiKeys": "tenant-keys"}}}))
        self.assertEqual(set(secret_mounts(manifests)), {"ROOMCAST_JWKS_FILE", "ROOMCAST_TENANT_API_KEYS_FILE", "ROOMCAST_REDIS_URL_FILE"})
        self.assertNotIn("no API keys are configured", manifests["NOTES"][0]["text"])

    def test_redis_password_and_ca_are_mounted_files(self) -> None:
        base = load_values(CHART / "ci" / "defaults-values.yaml")
        base["redis"]["url"] = "rediss://redis.example.internal:6380"
        for source in ["caSecret", "caConfigMap"]:
            values = merged(
                base,
                {"redis": {"existingPasswordSecret": {"name": "redis"}, "tls": {source: {"name": "redis-ca", "key": "bundle.pem"}}}},
            )
            manifests = render(values)
            container = gateway_container(manifests)
            mounts = secret_mounts(manifests)
            with self.subTest(ca=source):
                volume, mount = mounts["ROOMCAST_REDIS_PASSWORD_FILE"]
                self.assertEqual(volume["secret"]["secretName"], "redis")
                self.assertEqual(mounted_item(volume, mount, env_value(container, "ROOMCAST_REDIS_PASSWORD_FILE")), "redis-password")
                self.assertTrue(mount["readOnly"])
                volume, mount = mounts["ROOMCAST_REDIS_CA_FILE"]
                kind = "secret" if source == "caSecret" else "configMap"
                self.assertEqual(volume[kind].get("secretName") or volume[kind].get("name"), "redis-ca")
                self.assertEqual(mounted_item(volume, mount, env_value(container, "ROOMCAST_REDIS_CA_FILE")), "bundle.pem")
                # The password's own volume: not one of the chart Secret's items.
                secret_volume = next(v for v in pod_spec(manifests)["volumes"] if v["name"] == "secrets")
                self.assertNotIn("redis-password", [i["key"] for i in secret_volume["secret"]["items"]])
        manifests = render(load_values(CHART / "ci" / "defaults-values.yaml"))
        self.assertFalse({"ROOMCAST_REDIS_PASSWORD_FILE", "ROOMCAST_REDIS_CA_FILE"} & set(secret_mounts(manifests)))

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
        self.assertEqual(
            monitor["spec"]["selector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"] | {"app.kubernetes.io/component": "gateway"},
        )
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
# Kubernetes' own schemas, and every knob of the chart


# Kinds defined by CRDs, which kubernetes-validate has no schema for: skipped by name, never
# silently (any other kind without a schema fails).
CRD_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


@cache
def kubernetes_versions() -> tuple[str, str]:
    """The lowest Kubernetes the chart supports (Chart.yaml kubeVersion) and the highest one
    kubernetes-validate has schemas for (kubeVersion has no upper bound)."""
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    lowest = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", kube_version).group(1)
    bundled = kubernetes_validate.utils.all_versions()
    assert any(v.startswith(lowest + ".") for v in bundled), f"kubernetes-validate has no {lowest}"
    return f"{lowest}.0", max(bundled, key=version_key)


def lowest_version_for(values: dict, lowest: str) -> str:
    """Some values need a newer cluster than the chart's minimum; the chart refuses them below it."""
    if values.get("shutdown", {}).get("preStopSleepSeconds", 0) > 0:  # the preStop sleep action
        return max(lowest, "1.30.0", key=version_key)
    return lowest


class ChartValidatesAgainstKubernetes(unittest.TestCase):
    def test_every_ci_values_file_renders_valid_manifests_for_the_lowest_and_highest_kubernetes(self) -> None:
        lowest, highest = kubernetes_versions()
        self.assertIn("everything-values.yaml", [p.name for p in CI_VALUES])
        skipped: set[str] = set()
        for path in CI_VALUES:
            values = load_values(path)
            for version in sorted({lowest_version_for(values, lowest), highest}, key=version_key):
                manifests = render(values, kube_version=f"v{version}")
                for kind, docs in manifests.items():
                    if kind == "NOTES":
                        continue
                    for doc in docs:
                        with self.subTest(values=path.name, kubernetes=version, kind=kind, name=doc["metadata"]["name"]):
                            if kind in CRD_KINDS:
                                self.assertEqual(doc["apiVersion"], CRD_KINDS[kind])
                                skipped.add(kind)
                                continue
                            try:
                                kubernetes_validate.validate(doc, version, strict=True)
                            except kubernetes_validate.ValidationError as e:
                                where = ".".join(str(p) for p in e.path)
                                self.fail(f"{kind}/{doc['metadata']['name']} on Kubernetes {version}: {where}: {e.message}")
        # Every CRD kind is rendered by some file, so the skip list names nothing stale.
        self.assertEqual(skipped, set(CRD_KINDS))

    def test_the_validator_catches_what_an_older_cluster_rejects(self) -> None:
        """The preStop sleep action is 1.30+: strict validation for 1.25 refuses it, which is why
        the chart refuses preStopSleepSeconds below 1.30 (and files using it start at 1.30)."""
        lowest, _ = kubernetes_versions()
        values = load_values(CHART / "ci" / "defaults-values.yaml") | {"shutdown": {"preStopSleepSeconds": 5}}
        deployment = one(render(values, kube_version="v1.30.0"), "Deployment")
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, lowest, strict=True)
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


@cache
def everything() -> tuple[dict, dict]:
    values = load_values(CHART / "ci" / "everything-values.yaml")
    return values, render(values)


class ChartKnobs(unittest.TestCase):
    """Each value of the chart lands where it should (ci/everything-values.yaml sets them all)."""

    def test_api_service_is_separate_internal_and_never_routed(self) -> None:
        manifests = render(load_values(CHART / "ci" / "full-values.yaml"))
        api = api_service(manifests)
        self.assertEqual(api["spec"]["type"], "ClusterIP")
        self.assertEqual(api["spec"]["ports"], [{"name": "api", "port": 3001, "targetPort": "api", "protocol": "TCP"}])
        self.assertEqual(api["spec"]["selector"], one(manifests, "Deployment")["spec"]["selector"]["matchLabels"])
        self.assertNotIn("api", [p["name"] for p in public_service(manifests)["spec"]["ports"]])
        self.assertEqual(gateway_config(manifests)["ROOMCAST_PUBLIC_API"], "false")
        self.assertIn(f"http://{FULLNAME}-api.{NAMESPACE}.svc:3001", manifests["NOTES"][0]["text"])
        values, manifests = everything()
        namespace = values["namespaceOverride"]
        api = api_service(manifests)
        self.assertEqual(api["spec"]["type"], "LoadBalancer")
        self.assertEqual(api["spec"]["loadBalancerSourceRanges"], values["api"]["service"]["loadBalancerSourceRanges"])
        self.assertEqual(api["spec"]["ports"][0]["port"], 8081)
        self.assertEqual(api["spec"]["ports"][0]["nodePort"], 30081)
        self.assertEqual(api["spec"]["ports"][0]["appProtocol"], "http")
        self.assertEqual(api["metadata"]["annotations"], {"example.com/internal": "true"})
        self.assertEqual(api["metadata"]["labels"]["example.com/exposure"], "internal")
        self.assertEqual(gateway_config(manifests)["ROOMCAST_PUBLIC_API"], "true")
        self.assertIn(f"http://{FULLNAME}-api.{namespace}.svc:8081", manifests["NOTES"][0]["text"])
        # Nothing that faces the Internet points at the API Service or port.
        for ingress in manifests["Ingress"]:
            for rule in ingress["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    self.assertEqual(p["backend"]["service"], {"name": FULLNAME, "port": {"name": "public"}})
        (route,) = manifests["HTTPRoute"]
        backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
        self.assertEqual(backends, [{"name": FULLNAME, "port": values.get("service", {}).get("port", 80)}])
        self.assertNotIn(f"{FULLNAME}-api", yaml.safe_dump_all(manifests["Ingress"] + manifests["HTTPRoute"]))

    def test_api_load_balancer_needs_source_ranges_or_an_explicit_opt_in(self) -> None:
        base = load_values(CHART / "ci" / "defaults-values.yaml")
        # Without either: refused (invalid-combinations.yaml has the message).
        with self.assertRaisesRegex(helm.HelmRenderError, r"api\.service\.type=LoadBalancer without api\.service\.loadBalancerSourceRanges"):
            render(merged(base, {"api": {"service": {"type": "LoadBalancer"}}}))
        # The opt-in, typed: a string "true" is not it.
        with self.assertRaises(helm.HelmValuesError) as ctx:
            render(merged(base, {"api": {"service": {"type": "LoadBalancer", "allowPublicLoadBalancer": "true"}}}))
        self.assertIn("/api/service/allowPublicLoadBalancer", str(ctx.exception))
        internal = {"type": "LoadBalancer", "allowPublicLoadBalancer": True, "annotations": {"networking.gke.io/load-balancer-type": "Internal"}}
        manifests = render(merged(base, {"api": {"service": internal}}))
        spec = api_service(manifests)["spec"]
        self.assertEqual(spec["type"], "LoadBalancer")
        self.assertNotIn("loadBalancerSourceRanges", spec)
        kubernetes_validate.validate(api_service(manifests), kubernetes_versions()[1], strict=True)
        # Source ranges only where Kubernetes takes them.
        spec = api_service(render(merged(base, {"api": {"service": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}}})))["spec"]
        self.assertEqual(spec["type"], "ClusterIP")
        self.assertNotIn("loadBalancerSourceRanges", spec)
        # Documented.
        values_text = (CHART / "values.yaml").read_text()
        self.assertRegex(values_text, r"# -- Allow type LoadBalancer without loadBalancerSourceRanges[^\n]*\n(    #[^\n]*\n)*    allowPublicLoadBalancer: false")
        self.assertIn("`allowPublicLoadBalancer`", (CHART / "README.md").read_text())

    def test_service_monitor_scrapes_the_main_service_only(self) -> None:
        """Both Services select the gateway pods; the ServiceMonitor selects the main one (the
        scrape target, with the admin port) and never the API Service (component "api")."""
        cases = [load_values(CHART / "ci" / "full-values.yaml"), everything()[0]]
        # A user label on the API Service cannot make it the gateway's.
        cases.append(merged(cases[0], {"api": {"service": {"labels": {"app.kubernetes.io/component": "gateway", "team": "x"}}}}))
        for i, values in enumerate(cases):
            manifests = render(values)
            selector = one(manifests, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
            with self.subTest(case=i):
                self.assertEqual(api_service(manifests)["metadata"]["labels"]["app.kubernetes.io/component"], "api")
                self.assertEqual(public_service(manifests)["metadata"]["labels"]["app.kubernetes.io/component"], "gateway")
                selected = [
                    s["metadata"]["name"]
                    for s in manifests["Service"]
                    if set(selector.items()) <= set(s["metadata"]["labels"].items())
                ]
                self.assertEqual(selected, [FULLNAME])
                # The API Service keeps the release's other labels.
                for key in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"]:
                    self.assertEqual(api_service(manifests)["metadata"]["labels"][key], public_service(manifests)["metadata"]["labels"][key])
        self.assertEqual(api_service(manifests)["metadata"]["labels"]["team"], "x")

    def test_identity_providers(self) -> None:
        values, manifests = everything()
        config = gateway_config(manifests)
        self.assertEqual(config["ROOMCAST_JWT_JWKS_URL"], values["auth"]["jwksUrl"])
        self.assertEqual(config["ROOMCAST_JWT_JWKS_REFRESH"], "10m")
        self.assertEqual(config["ROOMCAST_JWT_JWKS_MIN_INTERVAL"], "30s")
        # Next to trusted issuers the default provider's iss is pinned (else its tokens are refused).
        self.assertEqual(config["ROOMCAST_JWT_ISSUER"], ",".join(values["auth"]["issuers"]))
        issuers_cm = named(manifests, "ConfigMap", f"{FULLNAME}-issuers")
        self.assertEqual(
            json.loads(issuers_cm["data"]["issuers.json"]),
            {
                "issuers": [
                    {"issuer": "https://a.example/", "jwks_url": "https://a.example/.well-known/jwks.json", "audiences": ["roomcast"], "tenants": ["acme"]},
                    {"issuer": "https://partner.example/", "public_key_file": "/etc/roomcast/partner/key.pem", "audiences": [], "tenants": ["partner"]},
                ]
            },
        )
        container = gateway_container(manifests)
        volume, mount = secret_mounts(manifests)["ROOMCAST_JWT_ISSUERS_FILE"]
        self.assertEqual(volume["configMap"]["name"], f"{FULLNAME}-issuers")
        self.assertEqual(mounted_item(volume, mount, env_value(container, "ROOMCAST_JWT_ISSUERS_FILE")), "issuers.json")
        # jwksUrl needs no key from a Secret; the issuers' file is not an env var source.
        self.assertNotIn("jwt-secret", one(manifests, "Secret")["stringData"])
        self.assertEqual([s["configMapRef"]["name"] for s in container["envFrom"]], [FULLNAME, "roomcast-extra"])
        # issuers mode: only the trusted issuers, and no Secret at all when nothing else is secret.
        values = {
            "replicaCount": 1,
            "auth": {
                "mode": "issuers",
                "trustedIssuers": [{"issuer": "https://a.example/", "jwksFile": "/keys/a.json", "tenants": ["*"]}],
            },
        }
        manifests = render(values)
        self.assertNotIn("Secret", manifests)
        self.assertNotIn("ROOMCAST_JWT_JWKS_URL", gateway_config(manifests))
        self.assertEqual(gateway_config(manifests)["ROOMCAST_JWT_JWKS_REFRESH"], "5m")
        self.assertEqual(set(secret_mounts(manifests)), {"ROOMCAST_JWT_ISSUERS_FILE"})
        # Changing an issuer rolls the pods.
        before = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        values["auth"]["trustedIssuers"][0]["tenants"] = ["acme"]
        after = one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        self.assertNotEqual(before, after)

    def test_namespace_override_and_common_labels_reach_every_resource(self) -> None:
        values, manifests = everything()
        namespaced = [d for kind, docs in manifests.items() if kind != "NOTES" for d in docs]
        self.assertGreaterEqual(len({d["kind"] for d in namespaced}), 13)
        for doc in namespaced:
            with self.subTest(kind=doc["kind"], name=doc["metadata"]["name"]):
                expected = values["serviceMonitor"]["namespace"] if doc["kind"] == "ServiceMonitor" else values["namespaceOverride"]
                self.assertEqual(doc["metadata"].get("namespace"), expected)
                for key, value in values["commonLabels"].items():
                    self.assertEqual(doc["metadata"]["labels"].get(key), value)
        pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(pod_labels["example.com/team"], "realtime")
        # The ServiceMonitor elsewhere still finds the Services.
        monitor = one(manifests, "ServiceMonitor")
        self.assertEqual(monitor["spec"]["namespaceSelector"], {"matchNames": [values["namespaceOverride"]]})
        # commonLabels cannot override the chart's own (selectors must stay stable).
        manifests = render(merged(load_values(CHART / "ci" / "defaults-values.yaml"), {"commonLabels": {"app.kubernetes.io/name": "x"}}))
        self.assertEqual(public_service(manifests)["metadata"]["labels"]["app.kubernetes.io/name"], "roomcast")

    def test_deployment_and_pod_knobs(self) -> None:
        values, manifests = everything()
        deployment = one(manifests, "Deployment")
        pod = pod_spec(manifests)
        container = gateway_container(manifests)
        self.assertEqual(container["image"], f"ghcr.io/roomcast/roomcast-gateway@{values['image']['digest']}")
        self.assertEqual(deployment["metadata"]["annotations"], values["deploymentAnnotations"])
        self.assertEqual(deployment["spec"]["revisionHistoryLimit"], 3)
        self.assertEqual(deployment["spec"]["minReadySeconds"], 5)
        self.assertEqual(deployment["spec"]["strategy"], values["strategy"])
        self.assertEqual(pod["priorityClassName"], "realtime-critical")
        self.assertEqual(pod["runtimeClassName"], "gvisor")
        self.assertEqual(pod["dnsConfig"], values["dnsConfig"])
        self.assertEqual(pod["hostAliases"], values["hostAliases"])
        self.assertIs(pod["enableServiceLinks"], False)
        self.assertEqual(pod["initContainers"], values["initContainers"])
        self.assertEqual([c["name"] for c in pod["containers"]], ["gateway", "log-shipper"])
        self.assertEqual(pod["containers"][1], values["extraContainers"][0])
        self.assertIn(values["extraVolumes"][0], pod["volumes"])
        self.assertIn(values["extraVolumeMounts"][0], container["volumeMounts"])
        self.assertEqual(container["env"][-1], values["extraEnv"][0], "extraEnv comes after the chart's own")
        self.assertEqual(container["envFrom"][1:], values["extraEnvFrom"])
        self.assertEqual(container["lifecycle"], values["lifecycle"])
        self.assertEqual(pod["containers"][0]["ports"][1], {"name": "api", "containerPort": 3001, "protocol": "TCP"})
        # Big integers stay integers in the ConfigMap (Helm would print 4.294967296e+09).
        config = gateway_config(manifests)
        self.assertEqual(config["ROOMCAST_HISTORY_MAX_BYTES"], "4294967296")
        self.assertEqual(config["ROOMCAST_HISTORY_MAX_ROOMS"], "5000000")
        self.assertEqual(config["ROOMCAST_CLIENT_BUFFER_BYTES"], "3000000000")

    def test_deployment_defaults_and_alternatives(self) -> None:
        base = load_values(CHART / "ci" / "defaults-values.yaml")
        manifests = render(base)
        deployment, pod = one(manifests, "Deployment"), pod_spec(manifests)
        self.assertEqual(deployment["spec"]["strategy"], {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
        self.assertEqual(deployment["spec"]["revisionHistoryLimit"], 10)
        self.assertNotIn("minReadySeconds", deployment["spec"])
        for field in ["priorityClassName", "runtimeClassName", "hostNetwork", "dnsPolicy", "dnsConfig", "hostAliases", "initContainers"]:
            self.assertNotIn(field, pod)
        self.assertIs(pod["enableServiceLinks"], False)
        self.assertEqual(len(pod["containers"]), 1)
        self.assertEqual(gateway_config(manifests)["ROOMCAST_HISTORY_MAX_BYTES"], "268435456")
        # Recreate drops the default rollingUpdate (Kubernetes refuses both).
        manifests = render(merged(base, {"strategy": {"type": "Recreate"}}))
        self.assertEqual(one(manifests, "Deployment")["spec"]["strategy"], {"type": "Recreate"})
        # An explicit dnsPolicy wins over the hostNetwork default.
        manifests = render(merged(base, {"hostNetwork": True, "dnsPolicy": "Default"}))
        self.assertEqual(pod_spec(manifests)["dnsPolicy"], "Default")
        # The tag, without a digest.
        manifests = render(merged(base, {"image": {"tag": "1.2.3"}}))
        self.assertEqual(gateway_container(manifests)["image"], "ghcr.io/roomcast/roomcast-gateway:1.2.3")
        # Both extraEnv lists (config.extraEnv is kept for compatibility), in order.
        manifests = render(merged(base, {"config": {"extraEnv": [{"name": "A", "value": "1"}]}, "extraEnv": [{"name": "B", "value": "2"}]}))
        self.assertEqual([e["name"] for e in gateway_container(manifests)["env"]][-2:], ["A", "B"])

    def test_host_network(self) -> None:
        """hostNetwork with the strategy values.yaml suggests for it: valid manifests, the
        cluster's DNS, and NOTES says which ports every node then exposes."""
        values = merged(
            load_values(CHART / "ci" / "defaults-values.yaml"),
            {"hostNetwork": True, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}},
        )
        lowest, highest = kubernetes_versions()
        for version in [lowest, highest]:
            manifests = render(values, kube_version=f"v{version}")
            with self.subTest(kubernetes=version):
                deployment = one(manifests, "Deployment")
                kubernetes_validate.validate(deployment, version, strict=True)
                self.assertEqual(deployment["spec"]["strategy"]["rollingUpdate"], {"maxSurge": 0, "maxUnavailable": 1})
                pod = pod_spec(manifests)
                self.assertIs(pod["hostNetwork"], True)
                self.assertEqual(pod["dnsPolicy"], "ClusterFirstWithHostNet")
                notes = manifests["NOTES"][0]["text"]
                self.assertRegex(notes, r"WARNING: hostNetwork is true")
                self.assertRegex(notes, r"the backend API 3001 and the admin port 9090")
                self.assertNotIn("NetworkPolicy", manifests)
        # The documentation says so too (values.yaml above hostNetwork, the chart README).
        block = []
        for line in reversed((CHART / "values.yaml").read_text().split("\nhostNetwork:")[0].splitlines()):
            if not line.startswith("#"):
                break
            block.insert(0, line.lstrip("# "))
        comment = " ".join(block)
        for needle in ["3001", "9090", "NetworkPolicy", "maxSurge: 0", "maxUnavailable: 1"]:
            self.assertIn(needle, comment)
        readme = (CHART / "README.md").read_text()
        section = readme.split("## hostNetwork")[1].split("\n## ")[0]
        for needle in ["3001", "9090", "NetworkPolicy", "maxSurge: 0", "maxUnavailable: 1"]:
            self.assertIn(needle, section)
        self.assertNotIn("WARNING: hostNetwork", render(load_values(CHART / "ci" / "defaults-values.yaml"))["NOTES"][0]["text"])

    def test_rolling_update_bounds(self) -> None:
        """Both 0 is refused (invalid-combinations.yaml); one of them 0 is fine, and Recreate
        ignores rollingUpdate altogether."""
        base = load_values(CHART / "ci" / "defaults-values.yaml")
        for rolling in [{"maxSurge": 0, "maxUnavailable": 1}, {"maxSurge": "25%", "maxUnavailable": 0}, {"maxSurge": 0, "maxUnavailable": "10%"}]:
            with self.subTest(rollingUpdate=rolling):
                strategy = one(render(merged(base, {"strategy": {"rollingUpdate": rolling}})), "Deployment")["spec"]["strategy"]
                self.assertEqual(strategy["rollingUpdate"], rolling)
        zero = {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}
        self.assertEqual(one(render(merged(base, zero)), "Deployment")["spec"]["strategy"], {"type": "Recreate"})
        # The default values.yaml strategy itself passes (maxUnavailable 0, maxSurge 1).
        self.assertEqual(one(render(base), "Deployment")["spec"]["strategy"]["rollingUpdate"], {"maxUnavailable": 0, "maxSurge": 1})

    def test_lifecycle_merges_with_the_prestop_sleep(self) -> None:
        values = merged(
            load_values(CHART / "ci" / "defaults-values.yaml"),
            {"lifecycle": {"postStart": {"httpGet": {"path": "/healthz", "port": "admin"}}}, "shutdown": {"preStopSleepSeconds": 7}},
        )
        container = gateway_container(render(values))
        self.assertEqual(
            container["lifecycle"],
            {"postStart": {"httpGet": {"path": "/healthz", "port": "admin"}}, "preStop": {"sleep": {"seconds": 7}}},
        )
        values["shutdown"]["preStopSleepSeconds"] = 0
        values["lifecycle"]["preStop"] = {"httpGet": {"path": "/drain", "port": "admin"}}
        self.assertEqual(gateway_container(render(values))["lifecycle"], values["lifecycle"])

    def test_probes(self) -> None:
        values, manifests = everything()
        container = gateway_container(manifests)
        for probe, key, path in [("startupProbe", "startup", "/healthz"), ("livenessProbe", "liveness", "/healthz"), ("readinessProbe", "readiness", "/readyz")]:
            with self.subTest(probe=probe):
                expected = {k: v for k, v in values["probes"][key].items() if k != "enabled"}
                self.assertEqual(container[probe], {"httpGet": {"path": path, "port": "admin"}, **expected})
        container = gateway_container(render(load_values(CHART / "ci" / "defaults-values.yaml")))
        self.assertNotIn("startupProbe", container)
        self.assertEqual(
            container["readinessProbe"],
            {"httpGet": {"path": "/readyz", "port": "admin"}, "initialDelaySeconds": 0, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 2},
        )

    def test_service_knobs(self) -> None:
        values, manifests = everything()
        service = public_service(manifests)
        spec = service["spec"]
        self.assertEqual(spec["type"], "LoadBalancer")
        self.assertEqual(spec["externalTrafficPolicy"], "Local")
        self.assertEqual(spec["loadBalancerSourceRanges"], ["203.0.113.0/24"])
        self.assertEqual(spec["loadBalancerClass"], "service.k8s.aws/nlb")
        self.assertEqual(spec["sessionAffinity"], "ClientIP")
        ports = {p["name"]: p for p in spec["ports"]}
        self.assertEqual((ports["public"]["nodePort"], ports["admin"]["nodePort"]), (30080, 30090))
        self.assertEqual(ports["public"]["appProtocol"], "kubernetes.io/ws")
        self.assertEqual(service["metadata"]["annotations"], values["service"]["annotations"])
        self.assertEqual(service["metadata"]["labels"]["example.com/exposure"], "public")
        # ClusterIP: no node ports or load balancer fields, even if set.
        manifests = render(merged(load_values(CHART / "ci" / "defaults-values.yaml"), {"service": {"nodePorts": {"public": 30080}, "externalTrafficPolicy": "Local"}}))
        spec = public_service(manifests)["spec"]
        self.assertEqual(spec["type"], "ClusterIP")
        for field in ["externalTrafficPolicy", "loadBalancerSourceRanges", "loadBalancerClass", "sessionAffinity"]:
            self.assertNotIn(field, spec)
        self.assertFalse(any("nodePort" in p or "appProtocol" in p for p in spec["ports"]))

    def test_http_route(self) -> None:
        values, manifests = everything()
        (route,) = manifests["HTTPRoute"]
        self.assertEqual(route["apiVersion"], "gateway.networking.k8s.io/v1")
        self.assertEqual(route["spec"]["parentRefs"], values["httpRoute"]["parentRefs"])
        self.assertEqual(route["spec"]["hostnames"], ["realtime.example.com"])
        self.assertEqual(route["metadata"]["annotations"], values["httpRoute"]["annotations"])
        self.assertEqual(route["metadata"]["labels"]["example.com/gateway"], "public")
        (rule,) = route["spec"]["rules"]
        for field in ["matches", "filters", "timeouts", "sessionPersistence"]:
            self.assertEqual(rule[field], values["httpRoute"][field])
        self.assertIn("https://realtime.example.com", manifests["NOTES"][0]["text"])
        # The default: every path, to the public port.
        manifests = render(merged(load_values(CHART / "ci" / "defaults-values.yaml"), {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}))
        (rule,) = one(manifests, "HTTPRoute")["spec"]["rules"]
        self.assertEqual(rule, {"backendRefs": [{"name": FULLNAME, "port": 80}], "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]})
        self.assertNotIn("HTTPRoute", render(load_values(CHART / "ci" / "defaults-values.yaml")))

    def test_network_policy(self) -> None:
        values, manifests = everything()
        policy = one(manifests, "NetworkPolicy")
        spec = policy["spec"]
        self.assertEqual(spec["podSelector"]["matchLabels"], one(manifests, "Deployment")["spec"]["selector"]["matchLabels"])
        self.assertEqual(spec["policyTypes"], ["Ingress", "Egress"])
        rules = {r["ports"][0]["port"]: r for r in spec["ingress"]}
        self.assertEqual(set(rules), {"public", "api", "admin"})
        self.assertEqual(rules["public"]["from"], values["networkPolicy"]["public"]["from"])
        self.assertEqual(
            rules["api"]["from"],
            values["networkPolicy"]["api"]["from"] + [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "backend"}}}],
        )
        self.assertIn({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}, rules["admin"]["from"])
        # The helm test pod may reach /readyz, and is itself no gateway pod.
        test_pod = one(manifests, "Pod")
        test_peer = rules["admin"]["from"][0]["podSelector"]["matchLabels"]
        self.assertTrue(set(test_peer.items()) <= set(test_pod["metadata"]["labels"].items()))
        self.assertEqual(spec["egress"][0]["ports"], [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
        self.assertEqual(spec["egress"][1:], values["networkPolicy"]["egress"]["rules"])
        # Enabled alone: Socket.IO from anywhere, the API from nobody (NOTES says so), no egress rules.
        manifests = render(merged(load_values(CHART / "ci" / "defaults-values.yaml"), {"networkPolicy": {"enabled": True}}))
        spec = one(manifests, "NetworkPolicy")["spec"]
        self.assertEqual(spec["policyTypes"], ["Ingress"])
        self.assertEqual(spec["ingress"][0], {"ports": [{"port": "public", "protocol": "TCP"}]})
        self.assertNotIn("api", [r["ports"][0]["port"] for r in spec["ingress"]])
        self.assertIn("the NetworkPolicy lets nobody reach it", manifests["NOTES"][0]["text"])
        self.assertNotIn("NetworkPolicy", render(load_values(CHART / "ci" / "defaults-values.yaml")))

    def test_network_policy_notes_follow_the_public_listener(self) -> None:
        """NOTES never says the NetworkPolicy limits the API when the public port serves it too."""
        base = merged(load_values(CHART / "ci" / "defaults-values.yaml"), {"networkPolicy": {"enabled": True}})
        limited = "The NetworkPolicy lets only networkPolicy.api.from / .namespaces reach it."
        cases = [
            # (values, expected, not expected)
            ({"networkPolicy": {"api": {"namespaces": ["backend"]}}}, limited, "does not limit"),
            ({"api": {"publicListener": True}, "networkPolicy": {"api": {"namespaces": ["backend"]}}}, "it admits\n  anyone,", limited),
            ({"api": {"publicListener": True}}, "API keys are its only protection", "lets nobody reach it"),
            (
                {"api": {"publicListener": True}, "networkPolicy": {"public": {"from": [{"namespaceSelector": {}}]}}},
                "it admits\n  networkPolicy.public.from,",
                limited,
            ),
        ]
        for extra, expected, unexpected in cases:
            with self.subTest(values=extra):
                notes = render(merged(base, extra))["NOTES"][0]["text"]
                self.assertIn(expected, notes)
                self.assertNotIn(unexpected, notes)
        notes = everything()[1]["NOTES"][0]["text"]  # publicListener and a NetworkPolicy
        self.assertNotIn(limited, notes)
        self.assertIn("does not limit who reaches it", notes)

    def test_network_policy_admits_prometheus_with_a_service_monitor(self) -> None:
        """With a ServiceMonitor, the admin peers are required (invalid-combinations.yaml) and
        are what the admin port's rule admits."""
        base = merged(load_values(CHART / "ci" / "defaults-values.yaml"), {"networkPolicy": {"enabled": True}, "serviceMonitor": {"enabled": True}})
        for admin, peer in [
            ({"namespaces": ["monitoring"]}, {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}),
            ({"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}, {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}),
        ]:
            with self.subTest(admin=admin):
                spec = one(render(merged(base, {"networkPolicy": {"admin": admin}})), "NetworkPolicy")["spec"]
                rules = {r["ports"][0]["port"]: r for r in spec["ingress"]}
                self.assertIn(peer, rules["admin"]["from"])
        # Without a ServiceMonitor nothing is required (Prometheus may not exist).
        self.assertIn("NetworkPolicy", render(merged(base, {"serviceMonitor": {"enabled": False}})))

    def test_test_pod_is_not_selected_by_the_gateway_selectors(self) -> None:
        manifests = render(load_values(CHART / "ci" / "full-values.yaml"))
        labels = one(manifests, "Pod")["metadata"]["labels"]
        selectors = [s["spec"]["selector"] for s in manifests["Service"]]
        selectors += [one(manifests, kind)["spec"]["selector"]["matchLabels"] for kind in ["Deployment", "PodDisruptionBudget"]]
        for selector in selectors:
            self.assertFalse(set(selector.items()) <= set(labels.items()), selector)

    def test_autoscaling_metrics(self) -> None:
        values, manifests = everything()
        metrics = one(manifests, "HorizontalPodAutoscaler")["spec"]["metrics"]
        self.assertEqual(metrics[0]["resource"]["name"], "cpu")
        self.assertEqual(
            metrics[1],
            {"type": "Pods", "pods": {"metric": {"name": "roomcast_connections"}, "target": {"type": "AverageValue", "averageValue": "5000"}}},
        )
        self.assertEqual(metrics[2:], values["autoscaling"]["metrics"])
        # The metric name is the gauge the gateway exports (what prometheus-adapter serves).
        self.assertIn("roomcast_connections", exported_metrics())

    def test_pod_disruption_budget_bounds(self) -> None:
        base = load_values(CHART / "ci" / "defaults-values.yaml")
        spec = one(render(base), "PodDisruptionBudget")["spec"]
        self.assertEqual(spec["maxUnavailable"], 1)
        self.assertNotIn("minAvailable", spec)
        spec = one(everything()[1], "PodDisruptionBudget")["spec"]
        self.assertEqual(spec["minAvailable"], 2)
        self.assertNotIn("maxUnavailable", spec)
        spec = one(render(merged(base, {"podDisruptionBudget": {"maxUnavailable": "25%"}})), "PodDisruptionBudget")["spec"]
        self.assertEqual(spec, {"maxUnavailable": "25%", "selector": spec["selector"]})

    def test_service_monitor_knobs(self) -> None:
        values, manifests = everything()
        monitor = one(manifests, "ServiceMonitor")
        self.assertEqual(monitor["metadata"]["namespace"], "monitoring")
        endpoint = monitor["spec"]["endpoints"][0]
        self.assertEqual(endpoint["relabelings"], values["serviceMonitor"]["relabelings"])
        self.assertEqual(endpoint["metricRelabelings"], values["serviceMonitor"]["metricRelabelings"])
        monitor = one(render(load_values(CHART / "ci" / "full-values.yaml")), "ServiceMonitor")
        self.assertEqual(monitor["metadata"]["namespace"], NAMESPACE)
        self.assertNotIn("namespaceSelector", monitor["spec"])
        self.assertNotIn("relabelings", monitor["spec"]["endpoints"][0])



class ChartRelay(unittest.TestCase):
    """The outbox relay (relay.*; ci/relay-values.yaml turns it on)."""

    @staticmethod
    def relay(manifests: dict) -> dict:
        return named(manifests, "Deployment", f"{FULLNAME}-relay")

    def test_off_by_default(self) -> None:
        manifests = render(load_values(CHART / "ci" / "defaults-values.yaml"))
        self.assertEqual([d["metadata"]["name"] for d in manifests["Deployment"]], [FULLNAME])
        self.assertNotIn(f"{FULLNAME}-relay", [s["metadata"]["name"] for s in manifests.get("Secret", [])])

    def test_the_relay_reads_mounted_files_and_the_gateways_settings(self) -> None:
        values = load_values(CHART / "ci" / "relay-values.yaml")
        manifests = render(values)
        deployment = self.relay(manifests)
        self.assertEqual(deployment["spec"]["replicas"], 2)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        self.assertEqual(container["command"], ["/usr/local/bin/roomcast-relay"])
        self.assertEqual(container["image"], gateway_container(manifests)["image"])
        env = {e["name"]: e["value"] for e in container["env"]}
        self.assertEqual(set(env) - relay_env_vars(), set(), "every variable is a relay option")
        # The relay and the gateways agree on Redis, history and publishing.
        config = gateway_config(manifests)
        # It rolls with the gateway's Secret (the Redis URL is read once at start).
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        gateway_annotations = named(manifests, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(annotations["checksum/gateway-secret"], gateway_annotations["checksum/secret"])
        for name in ["ROOMCAST_REDIS_PREFIX", "ROOMCAST_REDIS_COMMAND_TIMEOUT", "ROOMCAST_HISTORY_SIZE", "ROOMCAST_HISTORY_TTL",
                     "ROOMCAST_PUBLISH_DEDUPE_WINDOW", "ROOMCAST_PUBLISH_MAX_PAYLOAD"]:
            self.assertEqual(env[name], config[name], name)
        self.assertEqual(env["ROOMCAST_RELAY_BATCH_SIZE"], "200")
        self.assertEqual(env["ROOMCAST_RELAY_RETENTION"], "1h")
        # Secrets are files, never values in the environment.
        text = yaml.safe_dump(container)
        self.assertNotIn("app-password", text)
        self.assertNotIn("redis-master", text)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        files = {name: value for name, value in env.items() if name.endswith("_FILE")}
        self.assertEqual(
            set(files),
            {"ROOMCAST_RELAY_DATABASE_URL_FILE", "ROOMCAST_REDIS_URL_FILE", "ROOMCAST_REDIS_PASSWORD_FILE", "ROOMCAST_RELAY_DATABASE_CA_FILE"},
        )
        secrets = {s["metadata"]["name"]: s for s in manifests["Secret"]}
        for name, path in files.items():
            folder, file = path.rsplit("/", 1)
            volume = volumes[mounts[folder]]["secret"]
            (item,) = volume["items"]
            self.assertEqual(item["path"], file, name)
            if volume["secretName"] in secrets:
                self.assertIn(item["key"], secrets[volume["secretName"]]["stringData"], name)
        database = volumes[mounts["/etc/roomcast/relay"]]["secret"]
        self.assertEqual(secrets[database["secretName"]]["stringData"]["database-url"], values["relay"]["databaseUrl"])
        self.assertEqual(volumes[mounts["/etc/roomcast/redis"]]["secret"]["secretName"], FULLNAME, "the gateway's Secret")
        self.assertEqual(volumes[mounts["/etc/roomcast/redis-password"]]["secret"]["secretName"], "redis")
        self.assertEqual(volumes[mounts["/etc/roomcast/database-ca"]]["secret"]["secretName"], "rds-ca")
        # Probes on the admin port the relay listens on.
        (port,) = container["ports"]
        self.assertEqual(port["containerPort"], port_of(env["ROOMCAST_RELAY_ADMIN_LISTEN"]))
        self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": port["name"]})
        # Scraped when serviceMonitor is on: a PodMonitor on the relay's pods and admin port.
        monitor = one(manifests, "PodMonitor")
        self.assertEqual(monitor["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"])
        self.assertEqual(monitor["spec"]["podMetricsEndpoints"][0]["port"], port["name"])
        self.assertEqual(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack")
        self.assertNotIn("PodMonitor", render(merged(values, {"serviceMonitor": {"enabled": False}})))
        self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": port["name"]})
        self.assertEqual(container["securityContext"], gateway_container(manifests)["securityContext"])
        # No gateway selector picks the relay's pods, and the relay's selector no gateway pod.
        relay_labels = set(deployment["spec"]["template"]["metadata"]["labels"].items())
        gateway = named(manifests, "Deployment", FULLNAME)
        selectors = [svc["spec"]["selector"] for svc in manifests["Service"]]
        selectors += [gateway["spec"]["selector"]["matchLabels"], one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]]
        for selector in selectors:
            self.assertFalse(set(selector.items()) <= relay_labels, selector)
        self.assertFalse(set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(gateway["spec"]["template"]["metadata"]["labels"].items()))

    def test_the_rendered_environment_is_one_the_relay_accepts(self) -> None:
        """The relay binary validates the rendered settings (durations, batch size, prefix) before it
        connects anywhere: it must get as far as listening."""
        manifests = render(load_values(CHART / "ci" / "relay-values.yaml"))
        (container,) = self.relay(manifests)["spec"]["template"]["spec"]["containers"]
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        if not shutil.which("openssl"):
            self.skipTest("openssl is not installed (scripts/test installs it)")
        # A CA certificate for the CA file: the relay parses it before it starts.
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", tmp / "ca.key", "-out", tmp / "ca.pem"],
            check=True, capture_output=True,
        )
        env = {"PATH": os.environ["PATH"]}
        for e in container["env"]:
            env[e["name"]] = e["value"]
            if e["name"].endswith("_FILE"):
                path = tmp / e["name"]
                contents = {
                    "ROOMCAST_RELAY_DATABASE_URL_FILE": "postgres://app@127.0.0.1:1/app?sslmode=require\n",
                    "ROOMCAST_REDIS_URL_FILE": "redis://127.0.0.1:1\n",
                    "ROOMCAST_RELAY_DATABASE_CA_FILE": (tmp / "ca.pem").read_text(),
                }
                path.write_text(contents.get(e["name"], "password\n"))
                env[e["name"]] = str(path)
        env["ROOMCAST_RELAY_ADMIN_LISTEN"] = "127.0.0.1:0"
        env["ROOMCAST_LOG_FORMAT"] = "json"
        relay_help()  # skips when the relay is not built
        proc = subprocess.Popen([RELAY], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = b""
        try:
            # Read its log until it listens (or exits: a setting it refused), with a deadline;
            # raw reads of the descriptor, so select() sees everything that arrived.
            deadline = time.monotonic() + BOOT_DEADLINE
            while b"roomcast-relay listening" not in out and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    out += chunk
            self.assertIn(b"roomcast-relay listening", out, out.decode(errors="replace"))
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()

    def test_an_existing_database_url_secret_is_used_and_none_is_created(self) -> None:
        values = merged(load_values(CHART / "ci" / "relay-values.yaml"), {"relay": {"databaseUrl": "", "databaseUrlSecret": {"name": "app-db", "key": "url"}}})
        manifests = render(values)
        self.assertNotIn(f"{FULLNAME}-relay", [s["metadata"]["name"] for s in manifests["Secret"]])
        volume = next(v for v in self.relay(manifests)["spec"]["template"]["spec"]["volumes"] if v["name"] == "database-url")
        self.assertEqual(volume["secret"]["secretName"], "app-db")
        self.assertEqual(volume["secret"]["items"], [{"key": "url", "path": "database-url"}])

    def test_settings_that_cannot_work_are_refused_naming_them(self) -> None:
        base = load_values(CHART / "ci" / "relay-values.yaml")
        for extra, message in [
            ({"redis": {"url": ""}, "replicaCount": 1}, r"relay\.enabled needs redis\.url"),
            ({"relay": {"databaseUrl": ""}}, r"relay\.databaseUrl or relay\.databaseUrlSecret\.name"),
            ({"redis": {"tls": {"caSecret": {"name": "ca"}}}}, r"redis\.tls"),
            ({"config": {"history": {"size": 0}}}, r"config\.history\.size"),
        ]:
            with self.subTest(extra=extra), self.assertRaisesRegex(helm.HelmRenderError, message):
                render(merged(base, extra))
        for extra in [{"relay": {"batchSize": 0}}, {"relay": {"batchSize": 10001}}, {"relay": {"databaseUrl": "mysql://x"}},
                      {"relay": {"pollInterval": "soon"}}, {"relay": {"unknown": 1}}]:
            with self.subTest(extra=extra), self.assertRaises(helm.HelmValuesError):
                render(merged(base, extra))


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
    files = service.get("env_file", [])
    for f in files if isinstance(files, list) else [files]:
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

    def test_api_port_is_internal_and_published_on_loopback_through_the_load_balancer(self) -> None:
        cfg = haproxy_cfg()
        api_servers = re.findall(r"^\s*server (api-\d) (\S+):(\d+)", cfg, re.M)
        self.assertEqual({host for _, host, _ in api_servers}, set(compose_gateways()))
        for name, svc in compose_gateways().items():
            port = port_of(compose_env(svc)["ROOMCAST_API_LISTEN"])
            with self.subTest(replica=name):
                self.assertEqual({int(p) for _, h, p in api_servers if h == name}, {port})
                self.assertIn(str(port), [str(p) for p in svc.get("expose", [])])
                self.assertNotIn("ports", svc, "replicas are reached through the load balancer only")
        self.assertRegex(cfg, r"frontend api\n\s+bind :3001\n\s+default_backend api")
        lb_ports = compose()["services"]["lb"]["ports"]
        self.assertIn("127.0.0.1:3001:3001", lb_ports)
        # The public frontend never routes to the API backend.
        public = re.search(r"frontend public\n(.*?)\n\n", cfg, re.S).group(1)
        self.assertNotIn("api", public)
        host_ports = [str(p).split(":")[1] for svc in compose()["services"].values() for p in svc.get("ports", [])]
        self.assertEqual(len(host_ports), len(set(host_ports)), "each host port is published once")

    def test_load_balancer_fits_default_descriptor_limits(self) -> None:
        """An `ulimits` above the Docker daemon's hard limit fails with "error setting rlimit"
        (rootless Docker, CI runners): the default asks for none, and maxconn fits without."""
        self.assertNotIn("ulimits", compose()["services"]["lb"])
        maxconn = int(re.search(r"^\s*maxconn (\d+)", haproxy_cfg(), re.M).group(1))
        self.assertLessEqual(maxconn, 4096)

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

    def test_the_relay_reads_the_migrated_postgres_and_the_gateways_redis(self) -> None:
        services = compose()["services"]
        relay, postgres = services["relay"], services["postgres"]
        env = compose_env(relay)
        self.assertEqual(set(env) - relay_env_vars(), set())
        self.assertEqual(relay["entrypoint"], ["/usr/local/bin/roomcast-relay"])
        self.assertIn("COPY --from=build /out/roomcast-relay /usr/local/bin/roomcast-relay", (REPO / "Dockerfile").read_text())
        self.assertEqual(relay["image"], next(iter(compose_gateways().values()))["image"])
        for dependency in ("postgres", "redis"):
            self.assertEqual(relay["depends_on"][dependency]["condition"], "service_healthy")
        self.assertIn("healthcheck", postgres)
        self.assertIn("./relay/migrations:/docker-entrypoint-initdb.d:ro", postgres["volumes"])
        pg = postgres["environment"]
        self.assertEqual(
            env["ROOMCAST_RELAY_DATABASE_URL"],
            f"postgres://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}",
        )
        gateway_redis = {compose_env(g)["ROOMCAST_REDIS_URL"] for g in compose_gateways().values()}
        self.assertEqual(gateway_redis, {env["ROOMCAST_REDIS_URL"]})
        admin = port_of(env["ROOMCAST_RELAY_ADMIN_LISTEN"])
        self.assertIn(str(admin), [str(p) for p in relay.get("expose", [])])
        prometheus = yaml.safe_load((REPO / "deploy" / "compose" / "prometheus.yml").read_text())
        job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "roomcast-relay")
        self.assertEqual(job["static_configs"][0]["targets"], [f"relay:{admin}"])

    def test_a_boot_whose_picked_port_was_taken_is_tried_again(self) -> None:
        """boot_gateway's retry: the first port it picks is taken before the gateway listens (as
        the gateway's own Redis connection once took its API port), and the boot still works."""
        redis = RedisServer()
        self.addCleanup(redis.stop)
        env = compose_env(compose_gateways()["gateway-1"])
        env["ROOMCAST_REDIS_URL"] = redis.url
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = [taken.getsockname()[1]]
        module = sys.modules[__name__]
        real = module.free_port
        module.free_port = lambda: picks.pop() if picks else real()
        try:
            proc, admin = boot_gateway(env)
        finally:
            module.free_port = real
        try:
            self.assertEqual(http_status(f"http://127.0.0.1:{admin}/readyz"), 200)
            self.assertNotIn(taken.getsockname()[1], proc.ports.values())
        finally:
            stop_gateway(proc)

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

        Only the addresses change: replica N listens on 127.0.0.(N+1) with the same three ports,
        as the compose replicas share ports on their own hosts. maxconn is left as committed: it
        must fit this machine's descriptor limit as it fits Docker's default.
        """
        haproxy = find_haproxy()
        redis = RedisServer()
        self.addCleanup(redis.stop)
        env = compose_env(compose_gateways()["gateway-1"]) | {"ROOMCAST_REDIS_URL": redis.url}
        public, admin, api, front, api_front, stats = (free_port() for _ in range(6))
        replicas = {}
        for n in (1, 2, 3):
            proc, _ = boot_gateway(env, host=f"127.0.0.{n + 1}", public=public, admin=admin, api=api)
            self.addCleanup(stop_gateway, proc)
            replicas[f"g{n}"] = proc
        cfg = haproxy_cfg()
        cfg = re.sub(r"server (gateway-(\d)) \S+", lambda m: f"server {m[1]} 127.0.0.{int(m[2]) + 1}:{public}", cfg)
        cfg = re.sub(r"server (api-(\d)) \S+", lambda m: f"server {m[1]} 127.0.0.{int(m[2]) + 1}:{api}", cfg)
        cfg = re.sub(r"check port \d+", f"check port {admin}", cfg)
        cfg = cfg.replace("bind :3000", f"bind 127.0.0.1:{front}").replace("bind :8404", f"bind 127.0.0.1:{stats}")
        cfg = cfg.replace("bind :3001", f"bind 127.0.0.1:{api_front}")
        cfg = re.sub(r"\n *log .*", "", cfg).replace("option httplog", "")
        self.assertEqual(cfg.count(f"127.0.0.1:{front}"), 1)
        self.assertEqual(cfg.count(f"127.0.0.1:{api_front}"), 1)
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

        # The API frontend reaches every ready replica's API port; the public one serves no API.
        wait_until(lambda: up_servers(stats, "api") == {"api-1", "api-2", "api-3"}, "all replicas up in the API backend")
        publish = json.dumps({"tenant": "demo", "channel": "general", "event": "hello", "data": {}}).encode()
        headers = {"Authorization": f"Bearer {env['ROOMCAST_API_KEY']}", "Content-Type": "application/json"}
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{api_front}/v1/publish", data=publish, headers=headers), timeout=5
        ) as resp:
            self.assertEqual(resp.status, 200)
        with self.assertRaises(urllib.error.HTTPError) as ctx:
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{front}/v1/publish", data=publish, headers=headers), timeout=5
            )
        self.assertEqual(ctx.exception.code, 404)

        # A draining replica (SIGTERM: /readyz 503) leaves the rotation.
        replicas["g1"].terminate()
        wait_until(lambda: up_servers(stats) == {"gateway-2", "gateway-3"}, "gateway-1 taken out after SIGTERM")
        wait_until(lambda: up_servers(stats, "api") == {"api-2", "api-3"}, "gateway-1 taken out of the API backend")


def find_haproxy() -> str:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if not haproxy:
        raise unittest.SkipTest("haproxy is not installed (scripts/test installs it with apt when it can)")
    return haproxy


def up_servers(stats_port: int, backend: str = "gateways") -> set[str]:
    """Servers of `backend` HAProxy currently sends traffic to, from its stats CSV."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/;csv", timeout=2) as resp:
            rows = resp.read().decode().splitlines()
    except OSError:
        return set()
    header = rows[0].lstrip("# ").split(",")
    up = set()
    for row in rows[1:]:
        fields = dict(zip(header, row.split(",")))
        if fields.get("pxname") == backend and fields.get("svname") not in ("FRONTEND", "BACKEND"):
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
        listeners = ["ROOMCAST_LISTEN", "ROOMCAST_API_LISTEN", "ROOMCAST_ADMIN_LISTEN"]
        self.assertEqual(exposed, {port_of(gateway_default(option)) for option in listeners})
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
