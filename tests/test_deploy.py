"""The deployment files, checked without a Docker engine.

The Dockerfile's install steps run in a fresh virtualenv; docker-compose.yml is checked
by ``docker compose config`` when a compose client exists, and structurally always;
promtool checks the Prometheus config and unit-tests the alerts; every metric the alerts
and the Grafana dashboard use is looked up in a real pipgate's ``/metrics``; the systemd
unit goes through ``systemd-analyze verify``.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from prometheus_client.parser import text_string_to_metric_families

from pipgate import __version__
from tests.support.fake_pypi import FakePyPI
from tests.support.forward_proxy import ForwardProxy
from tests.support.server import PipgateProcess

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS_DIR = REPO / "config" / "prometheus"
GRAFANA_DIR = REPO / "config" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "pipgate.json"
UNIT = REPO / "config" / "pipgate.service"
SQUID_CONF = REPO / "config" / "squid" / "squid.conf"

ALERTS = {
    "PipgateUpstreamDown",
    "PipgateProxyDown",
    "PipgateDownloadFailures",
    "PipgateHashMismatch",
    "PipgateMergeConflict",
    "PipgateCacheNearlyFull",
    "PipgateIntegrityFailures",
    "PipgateNotScraped",
    "PipgateFleetCoordinationDown",
}
#: Metrics the dashboard must chart (the panels the deployment promises).
DASHBOARD_METRICS = {
    "pipgate_cache_requests_total",
    "pipgate_bytes_served_total",
    "pipgate_download_failures_total",
    "pipgate_upstream_up",
    "pipgate_proxy_up",
    "pipgate_http_request_duration_seconds_bucket",
    "pipgate_upstream_request_duration_seconds_bucket",
    "pipgate_inflight_downloads",
    "pipgate_cache_size_bytes",
    "pipgate_cache_max_size_bytes",
    "pipgate_cache_evictions_total",
    "pipgate_download_resumes_total",
    "pipgate_links_dropped_total",
    "pipgate_merge_conflicts_total",
    "pipgate_policy_blocks_total",
}
METRIC_NAME = re.compile(r"\bpipgate_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(pipgate_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
#: Labels Prometheus adds or PromQL makes up, not in pipgate's exposition (``replica``:
#: relabelled from the target for the replicas of a fleet, see prometheus.yml).
TARGET_LABELS = {"instance", "job", "le", "replica"}


def load_yaml(path: Path) -> Any:
    """A YAML file's content."""
    return yaml.safe_load(path.read_text())


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capturing its output as text, within a time well under pytest's."""
    kw.setdefault("timeout", 240)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    pairs = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        pairs.append((keyword.upper(), args.strip()))
    return pairs


def instruction(name: str) -> list[str]:
    """The arguments of every `name` instruction."""
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def pip_installs() -> list[list[str]]:
    """The arguments of each of the Dockerfile's ``pip install`` steps, in order."""
    found = []
    for args in instruction("RUN"):
        for step in args.split("&&"):
            words = shlex.split(step)
            if words[:2] == ["pip", "install"]:
                found.append(words[2:])
    assert found, "expected a `pip install` in the Dockerfile"
    return found


def build_context(dest: Path) -> Path:
    """Copy what the Dockerfile's COPY steps copy into `dest` (its WORKDIR), as Docker
    would: a directory's contents into the target, files into a target directory."""
    for args in instruction("COPY"):
        *sources, target = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), f"unsupported COPY flags: {args}"
        into = dest / target
        for source in sources:
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, into, dirs_exist_ok=True)
            elif target.endswith("/") or len(sources) > 1:
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into / src.name)
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into)
    return dest


def test_dockerfile_declares_a_non_root_user_volume_healthcheck_and_port() -> None:
    """USER is not root, the cache is a VOLUME, HEALTHCHECK hits /healthz, 3141 exposed."""
    users = instruction("USER")
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(instruction("ENV"))
    cache_dir = re.search(r"PIPGATE_CACHE_DIR=(\S+)", env)
    assert cache_dir, "the image should set PIPGATE_CACHE_DIR"
    volumes = [v for args in instruction("VOLUME") for v in re.findall(r"/[\w/.-]+", args)]
    assert cache_dir.group(1) in volumes
    healthchecks = instruction("HEALTHCHECK")
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]
    assert "3141" in " ".join(instruction("EXPOSE")).split()
    image, _, digest = instruction("FROM")[0].partition("@sha256:")
    assert image.startswith("python:3.11")
    assert re.fullmatch(r"[0-9a-f]{64}", digest), "the base image is pinned by digest"


def test_the_image_installs_only_hash_pinned_dependencies_from_the_lock_file() -> None:
    """Every pip install in the image either takes hashes from requirements.lock or
    resolves nothing; the lock has every dependency of pyproject.toml (and [prefetch]),
    each at a version its specifier allows, with at least one sha256."""
    installs = pip_installs()
    for args in installs:
        assert "--require-hashes" in args or "--no-deps" in args, args
    assert any("requirements.lock" in args for args in installs)
    lock = (REPO / "requirements.lock").read_text()
    pinned = {}
    for block in re.split(r"\n(?=[A-Za-z])", lock):
        head = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if head:
            assert "--hash=sha256:" in block, f"{head.group(1)} has no hash"
            pinned[canonicalize_name(head.group(1))] = Version(head.group(2))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["prefetch"]]
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in requirements.lock: regenerate it"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.lock pins {name}=={pinned[name]}, outside {requirement.specifier}"
        )


def test_dockerfile_install_steps_work_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """The image's ``pip install`` of its COPYed files gives a working ``pipgate``."""
    context = build_context(tmp_path / "src")
    venv = tmp_path / "venv"
    done = run([sys.executable, "-m", "venv", str(venv)])
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for args in pip_installs():
        done = run([*install, *args], cwd=context, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    pipgate = venv / "bin" / "pipgate"
    version = run([str(pipgate), "--version"])
    assert version.returncode == 0, version.stderr
    assert __version__ in version.stdout + version.stderr
    serve_help = run([str(pipgate), "serve", "--help"])
    assert serve_help.returncode == 0, serve_help.stderr
    assert "--config" in serve_help.stdout
    # The image can prefetch: uv (the resolver) and rich (the progress bar) are in it.
    tools = run([str(venv / "bin" / "python"), "-c", "import uv, rich; print(uv.find_uv_bin())"])
    assert tools.returncode == 0, tools.stderr
    # A non-editable install: the package lives in the venv, not in the checkout.
    where = run([str(venv / "bin" / "python"), "-c", "import pipgate; print(pipgate.__file__)"])
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout


# --- docker compose -------------------------------------------------------------------


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """A service's bind mounts: (host path, container path, read-only)."""
    mounts = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume}"
        host, container, *mode = volume.split(":")
        if host.startswith((".", "/")):
            mounts.append((host, container, "ro" in mode))
    return mounts


def mount_target(service: dict[str, Any], host: str) -> str:
    """Where `service` mounts the repository path `host`."""
    for source, container, _ in bind_mounts(service):
        if (REPO / source).resolve() == (REPO / host).resolve():
            return container
    raise AssertionError(f"{host} is not mounted")


def test_compose_file_is_accepted_by_docker_compose() -> None:
    """``docker compose config`` accepts the file, with and without the proxy profile."""
    docker = shutil.which("docker")
    if docker is None or run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("no `docker compose` client here; the structural checks below still run")
    for extra in ([], ["--profile", "proxy"]):
        done = run([docker, "compose", "-f", str(COMPOSE), *extra, "config", "--quiet"])
        assert done.returncode == 0, done.stderr


def test_compose_services_mounts_ports_and_healthcheck() -> None:
    """Every service is there, mounts existing repository files, exposes its port."""
    data = compose()
    services = data["services"]
    assert {"pipgate", "prometheus", "grafana", "squid"} <= set(services)
    named = set(data.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith((".", "/")):
                assert (REPO / host).exists(), f"{name} mounts missing {host}"
            else:
                assert host in named, f"{name} uses undeclared volume {host}"
    ports = {name: service.get("ports", []) for name, service in services.items()}
    # Published on loopback unless the operator says otherwise.
    assert ports["pipgate"] == ["${PIPGATE_BIND:-127.0.0.1}:3141:3141"]
    assert ports["prometheus"] == ["${MONITORING_BIND:-127.0.0.1}:9090:9090"]
    assert ports["grafana"] == ["${MONITORING_BIND:-127.0.0.1}:3000:3000"]
    # Grafana's admin password has no default: compose refuses to start without it.
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password

    pipgate = services["pipgate"]
    assert pipgate["build"] == "."
    env = pipgate["environment"]
    config_target = mount_target(pipgate, "./config/pipgate.toml")
    assert env["PIPGATE_CONFIG"] == config_target == "/etc/pipgate/pipgate.toml"
    assert all(ro for _, _, ro in bind_mounts(pipgate)), "pipgate's config is read-only"
    assert f"pipgate-cache:{env['PIPGATE_CACHE_DIR']}" in pipgate["volumes"]
    assert env["PIPGATE_HOST"] == "0.0.0.0"
    assert "/healthz" in " ".join(pipgate["healthcheck"]["test"])

    prometheus = services["prometheus"]
    config_dir = mount_target(prometheus, "./config/prometheus")
    assert f"--config.file={config_dir}/prometheus.yml" in prometheus["command"]
    grafana = services["grafana"]
    assert mount_target(grafana, "./config/grafana/provisioning") == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "pipgate.yml")
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mount_target(grafana, "./config/grafana/dashboards") == dashboards_path
    assert services["squid"]["profiles"] == ["proxy"]
    assert mount_target(services["squid"], "./config/squid/squid.conf") == "/etc/squid/squid.conf"
    assert "PIPGATE_PROXY: http://squid:3128" in COMPOSE.read_text()


def test_monitoring_configs_point_at_the_compose_services() -> None:
    """Prometheus scrapes pipgate's service and port; Grafana reads that Prometheus."""
    services = compose()["services"]
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pipgate"]
    assert job["static_configs"][0]["targets"] == ["pipgate:3141"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["scrape_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    assert "pipgate" in services
    (source,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


# --- Prometheus rules (promtool) ------------------------------------------------------


def promtool() -> str:
    """promtool's path; a failure, not a skip, without it: scripts/test.sh installs it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: run `bash scripts/test.sh` (as root it installs Debian's "
            "`prometheus` package, which provides promtool)"
        )
    return path


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    groups = load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: list[str]) -> None:
    """promtool accepts the config and the rules, and the alert unit tests pass."""
    done = run([promtool(), *args], cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_are_complete_and_each_has_firing_and_quiet_tests() -> None:
    """The promised alerts, with severity and texts; each tested firing and not firing."""
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    cases = [
        case
        for test in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case.get("exp_alerts") for case in mine), f"{alert} is never seen firing"
        assert any(not case.get("exp_alerts") for case in mine), f"{alert}: no quiet case"


# --- Grafana dashboard ----------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard (targets and variable queries)."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for promtool."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
    )


def test_dashboard_is_valid_grafana_json_on_the_provisioned_datasource() -> None:
    """Schema version, unique ids, datasource uid ``prometheus``, required panels."""
    data = dashboard()
    assert data["uid"] == "pipgate" and data["title"]
    assert 36 <= data["schemaVersion"] <= 41
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus"
    used = {name for expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}
    assert used >= DASHBOARD_METRICS, f"not charted: {DASHBOARD_METRICS - used}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses: promtool checks them as recording rules."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, expr in enumerate(dashboard_queries())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run([promtool(), "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr


# --- metric names against a real pipgate ----------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """pipgate's ``/metrics`` after serving a page and a file through a forward proxy
    (so the proxy's series exist too)."""
    tmp = tmp_path_factory.mktemp("metrics")
    fake = FakePyPI.with_sample_tree(page_format="json")
    fake.start()
    try:
        with (
            ForwardProxy() as proxy,
            PipgateProcess(
                upstream=fake.index_url,
                cache_dir=tmp / "cache",
                extra_args=("--proxy", proxy.url),
            ) as gate,
        ):
            page_url = f"{gate.index_url}alpha/"
            request = urllib.request.Request(
                page_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                page = json.load(resp)
            file_url = urljoin(page_url, page["files"][0]["url"].split("#")[0])
            with urllib.request.urlopen(file_url, timeout=10) as resp:
                assert resp.read()
            check_healthchecks(gate)
            with urllib.request.urlopen(f"{gate.url}/metrics", timeout=10) as resp:
                return str(resp.read().decode())
    finally:
        fake.stop()


def check_healthchecks(gate: PipgateProcess) -> None:
    """The Dockerfile's and compose's health-check commands succeed against `gate`."""
    commands = [instruction("HEALTHCHECK")[0].split(" CMD ", 1)[1]]
    test = compose()["services"]["pipgate"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    commands.append(shlex.join(test[1:]))
    for command in commands:
        words = shlex.split(command.replace("127.0.0.1:3141", f"127.0.0.1:{gate.port}"))
        assert words[0] == "python", command
        done = run([sys.executable, *words[1:]], timeout=10)
        assert done.returncode == 0, f"{command}: {done.stderr}"


def exposed_samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets it is exposed with."""
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def monitoring_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert expression and dashboard query."""
    queries = [(f"alert {r['alert']}", str(r["expr"])) for r in alert_rules()]
    queries += [("dashboard", expr) for expr in dashboard_queries()]
    return queries


def test_every_metric_used_by_alerts_and_dashboard_is_exported(exposition: str) -> None:
    """Each ``pipgate_*`` sample name in a query exists in pipgate's real exposition."""
    samples = exposed_samples(exposition)
    texts = [expr for _, expr in monitoring_queries()]
    texts += [str(a) for r in alert_rules() for a in r["annotations"].values()]
    missing = {
        (name, text.strip()[:80])
        for text in texts
        for name in METRIC_NAME.findall(text)
        if name not in samples
    }
    assert not missing, f"not in /metrics: {sorted(missing)}"


def test_label_names_and_values_in_queries_exist(exposition: str) -> None:
    """Label matchers select existing series; ``by (...)`` labels exist on the metrics."""
    samples = exposed_samples(exposition)
    for where, expr in monitoring_queries():
        for name, matchers in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(matchers):
                if label in TARGET_LABELS or op not in ("=", "=~"):
                    continue
                values = {labels.get(label) for labels in samples.get(name, [])}
                assert any(v is not None and re.fullmatch(value, v) for v in values), (
                    f"{where}: {name}{{{label}{op}{value!r}}} matches nothing in {values}"
                )
        known = set(TARGET_LABELS)
        for name in METRIC_NAME.findall(expr):
            known |= {label for labels in samples.get(name, []) for label in labels}
        for group in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in known, f"{where}: no metric in {expr!r} has label {label}"


# --- systemd and squid ----------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    """The systemd unit, parsed as INI (repeated keys keep the last value)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_settings() -> None:
    """A hardened simple service with its own user, cache directory and restarts."""
    service = unit()["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"] == "/usr/local/bin/pipgate serve --config /etc/pipgate/pipgate.toml"
    assert service["User"] == "pipgate"
    assert service["CacheDirectory"] == service["StateDirectory"] == "pipgate"
    assert service["Environment"] == "PIPGATE_CACHE_DIR=/var/cache/pipgate"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["Restart"] == "on-failure"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit (with ExecStart pointed at this
    machine's pipgate when /usr/local/bin/pipgate does not exist here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unit()  # it parses, at least
        pytest.skip("no systemd-analyze here: only checked that the unit parses as INI")
    done = run([analyze, "verify", str(UNIT)])
    if done.returncode == 0 and not done.stderr.strip():
        return
    problems = [line for line in done.stderr.splitlines() if line.strip()]
    environmental = all("/usr/local/bin/pipgate" in line for line in problems)
    assert environmental, done.stderr
    beside = Path(sys.executable).with_name("pipgate")
    local = str(beside) if beside.exists() else shutil.which("pipgate")
    assert local is not None, "pipgate is not installed in this environment"
    print(f"systemd-analyze: /usr/local/bin/pipgate missing here; verifying with {local}")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/pipgate", local))
    done = run([analyze, "verify", str(copy)])
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_squid_config_parses() -> None:
    """``squid -k parse`` accepts config/squid/squid.conf (when squid is installed)."""
    squid = shutil.which("squid")
    if squid is None:
        pytest.skip("squid is not installed here (the compose image brings its own)")
    done = run([squid, "-k", "parse", "-f", str(SQUID_CONF)])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not re.search(r"WARNING|ERROR|FATAL", output), output
