"""Configuration: precedence, validation, and one-line errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipgate.config import (
    SETTINGS,
    Config,
    ConfigError,
    load_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipgate.toml"
    path.write_text(text)
    return path


def test_defaults_point_at_pypi_on_loopback() -> None:
    config = load_config(env={})
    assert [u.url for u in config.upstreams] == ["https://pypi.org/simple/"]
    assert config.upstreams[0].name == "pypi.org"
    assert config.upstreams[0].file_origins == (
        "https://pypi.org",
        "https://files.pythonhosted.org",
    )
    assert config.host == "127.0.0.1"
    assert config.index_ttl == 600


def test_precedence_is_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 1111\nhost = "0.0.0.0"\n[cache]\nindex_ttl = "5m"\n')
    env = {"PIPGATE_PORT": "2222", "PIPGATE_INDEX_TTL": "7"}
    config = load_config(config_file=path, env=env, flags={"port": "3333"})
    assert config.port == 3333  # flag
    assert config.index_ttl == 7  # env beats file
    assert config.host == "0.0.0.0"  # file beats default
    assert config.max_stale == Config().max_stale  # default


def test_config_file_can_come_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\nurl = "https://mirror.example/simple"\n')
    config = load_config(env={"PIPGATE_CONFIG": str(path)})
    assert config.upstreams[0].url == "https://mirror.example/simple/"


@pytest.mark.parametrize(
    ("source", "text", "needle"),
    [
        ("toml", "[cache]\nindex_ttl = 'soon'\n", "cache.index_ttl"),
        ("toml", "[cache]\nttl = 5\n", "unknown key cache.ttl"),
        ("toml", "[nope]\n", "unknown section [nope]"),
        ("toml", "[server\n", "invalid TOML"),
        ("toml", "[server]\nport = 70000\n", "server.port"),
        ("toml", "[upstream]\nurl = 'ftp://x/'\n", "upstream.url"),
        ("env", "PIPGATE_PORT=abc", "PIPGATE_PORT"),
        ("env", "PIPGATE_MAX_STALE=-5", "PIPGATE_MAX_STALE"),
        ("flag", "upstream=not a url", "--upstream"),
        ("flag", "index_ttl=1x", "--index-ttl"),
    ],
)
def test_bad_values_raise_one_line_naming_the_key(
    tmp_path: Path, source: str, text: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        if source == "toml":
            load_config(config_file=write(tmp_path, text), env={})
        elif source == "env":
            key, value = text.split("=", 1)
            load_config(env={key: value})
        else:
            key, value = text.split("=", 1)
            load_config(env={}, flags={key: value})
    message = str(caught.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(600, 600), ("600", 600), ("10m", 600), ("1.5h", 5400), ("1d", 86400), ("250ms", 0.25)],
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    ("raw", "size"),
    [(1024, 1024), ("50GB", 50 << 30), ("512MiB", 512 << 20), ("1k", 1024), ("0", 0)],
)
def test_sizes(raw: object, size: int) -> None:
    assert parse_size(raw) == size


def test_every_setting_is_in_the_documented_example_config() -> None:
    example = (REPO / "config" / "pipgate.toml").read_text()
    for setting in SETTINGS:
        assert f"{setting.key} =" in example, setting.toml_key
    # And the example itself is valid.
    load_config(config_file=REPO / "config" / "pipgate.toml", env={})


def test_cli_exits_2_with_one_line_on_bad_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipgate", "serve", "--port", "notaport"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--port" in lines[0]


def test_credentials_come_from_env_or_file_and_never_show_in_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "proxy-secret"
    secret_file.write_text("alice:s3cr3t\n")
    path = write(
        tmp_path,
        f'[upstream]\nproxy = ["http://proxy.corp:3128"]\nproxy_auth_file = "{secret_file}"\n'
        'username = "ci"\npassword_env = "INDEX_PASSWORD"\n',
    )
    config = load_config(config_file=path, env={"INDEX_PASSWORD": "hunter2"})
    secrets = config.upstreams[0].secrets
    assert secrets.proxy_auth == ("alice", "s3cr3t")
    assert secrets.basic_auth == ("ci", "hunter2")
    assert "s3cr3t" not in repr(config) and "hunter2" not in repr(config)


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ('proxy_auth_env = "NOPE"', {}, "upstream.proxy_auth_env: environment variable NOPE"),
        ('proxy_auth_file = "/nonexistent/x"', {}, "upstream.proxy_auth_file: cannot read"),
        ('password_env = "P"', {"P": "x"}, "upstream.username: required"),
        ('ca_bundle = "/nonexistent.pem"', {}, "upstream.ca_bundle: no such file"),
        ('proxy = ["ftp://proxy"]', {}, "upstream.proxy"),
        ('ca_bundle_mode = "replace"', {}, "upstream.ca_bundle_mode"),
    ],
)
def test_bad_network_settings_name_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_file=write(tmp_path, f"[upstream]\n{toml}\n"), env=env)
    assert needle in str(caught.value)


def test_proxy_environment_is_captured_once_in_either_case() -> None:
    config = load_config(env={"HTTPS_PROXY": "http://p:1", "no_proxy": "corp"})
    expected = {"https_proxy": "http://p:1", "no_proxy": "corp"}
    assert config.upstreams[0].secrets.env_proxies == expected


SEVERAL = """
[[upstream]]
name = "internal"
url = "https://ci:t0ken@artifactory.corp.example/api/pypi/pypi-local/simple"
[[upstream]]
name = "pypi"
url = "https://pypi.org/simple/"
proxy = ["http://proxy.corp:3128"]
[[upstream]]
name = "pytorch"
url = "https://download.pytorch.org/whl/cpu/"
file_hosts = ["https://*.pytorch.org/"]
[[route]]
projects = ["torch", "Torch_Vision", "torchaudio"]
upstreams = ["pytorch"]
[[route]]
projects = ["corp-*"]
upstreams = ["internal"]
"""


def test_several_upstreams_each_get_their_own_slice(tmp_path: Path) -> None:
    config = load_config(config_file=write(tmp_path, SEVERAL), env={"PIPGATE_RETRIES": "4"})
    internal, pypi, pytorch = config.upstreams
    assert [u.name for u in config.upstreams] == ["internal", "pypi", "pytorch"]
    # Credentials written in the URL become basic auth for that index and leave the URL.
    assert internal.url == "https://artifactory.corp.example/api/pypi/pypi-local/simple/"
    assert internal.secrets.basic_auth == ("ci", "t0ken")
    assert "t0ken" not in repr(config)
    assert pypi.proxy == ("http://proxy.corp:3128",) and internal.proxy == ()
    assert pytorch.file_origins == ("https://download.pytorch.org", "https://*.pytorch.org")
    assert internal.file_origins == ("https://artifactory.corp.example",)
    # Environment variables and flags set the first upstream only.
    assert (internal.retries, pypi.retries) == (4, 2)
    assert config.routes[0].projects == ("torch", "torch-vision", "torchaudio")
    assert config.routes[1].upstreams == ("internal",)


def test_the_single_upstream_flags_and_table_still_configure_one_upstream(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[upstream]\nurl = "https://mirror.example/simple/"\nretries = 1\n')
    config = load_config(
        config_file=path,
        env={"PIPGATE_PROXY": "http://p1:3128,http://p2:3128"},
        flags={"upstream": "https://other.example/simple"},
    )
    (only,) = config.upstreams
    assert only.url == "https://other.example/simple/"  # the flag wins over the file
    assert only.name == "other.example"
    assert only.proxy == ("http://p1:3128", "http://p2:3128")
    assert only.retries == 1


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        (
            '[[upstream]]\nurl = "https://a.example/simple/"\n'
            '[[upstream]]\nurl = "https://a.example/other/"\n',
            "upstream[a.example].name: two upstreams are called 'a.example'",
        ),
        ('[[upstream]]\nname = "bad name"\n', "upstream[1].name"),
        ('[[upstream]]\nname = "x"\nfile_hosts = ["https://h/path"]\n', "upstream[1].file_hosts"),
        ('[[upstream]]\nname = "x"\nverify = "maybe"\n', "upstream[1].verify"),
        ('[[upstream]]\nname = "x"\nttl = 1\n', "unknown key upstream[1].ttl"),
        ('[[route]]\nupstreams = ["pypi.org"]\n', "route[1].projects: required"),
        ('[[route]]\nprojects = ["a"]\n', "route[1].upstreams: required"),
        (
            '[[route]]\nprojects = ["a"]\nupstreams = ["nope"]\n',
            "route[1].upstreams: no upstream is called 'nope' (configured: pypi.org)",
        ),
        ('[[route]]\nprojects = ["a b"]\nupstreams = ["pypi.org"]\n', "route[1].projects"),
        ('[[route]]\nprojects = []\nupstreams = ["pypi.org"]\n', "route[1].projects"),
        ('[[route]]\nprojects = ["a"]\nupstreams = ["pypi.org", "pypi.org"]\n', "twice"),
        ('[[route]]\nprojects = ["a"]\nupstreams = ["pypi.org"]\nmerge = 3\n', "route[1].merge"),
        ("[route]\nprojects = ['a']\n", "expected [[route]] tables"),
        (
            '[upstream]\nurl = "https://u:p@x.example/simple/"\nusername = "u"\n'
            'password_env = "P"\n',
            "upstream.url: has credentials, and so does password_*/token_*",
        ),
        (
            '[[upstream]]\nname = "a"\nca_bundle = "/nonexistent.pem"\n'
            '[[upstream]]\nname = "b"\n',
            "upstream[a].ca_bundle: no such file",
        ),
    ],
)
def test_bad_upstream_and_route_tables_name_the_key(
    tmp_path: Path, toml: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_file=write(tmp_path, toml), env={"P": "x"})
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for setting in SETTINGS:
        assert f"`{setting.toml_key}`" in table or f"`{setting.key}`" in table, setting.toml_key
        if setting.env_var and setting.table != "route":
            assert f"`{setting.env_var}`" in table, setting.env_var
