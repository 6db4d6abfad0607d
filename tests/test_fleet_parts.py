"""The fleet's parts on their own: configuration, eviction of the shared store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipgate.config import ConfigError, load_config
from pipgate.fleet.coordinator import LocalCoordinator
from pipgate.fleet.evict import SharedEvictor
from pipgate.metrics import Metrics
from pipgate.store.shared_dir import SharedDirectory

pytestmark = pytest.mark.timeout(60)

REDIS = {
    "PIPGATE_COORDINATION": "redis",
    "PIPGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
}


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PIPGATE_STORAGE": "nfs"}, "PIPGATE_STORAGE: expected disk, s3 or directory"),
        ({"PIPGATE_STORAGE": "s3"}, "storage.bucket: required when storage.kind = s3"),
        ({"PIPGATE_STORAGE": "directory"}, "storage.directory: required"),
        ({"PIPGATE_S3_BUCKET": "Bad_Bucket"}, "PIPGATE_S3_BUCKET: expected an S3 bucket name"),
        ({"PIPGATE_S3_ENDPOINT": "http://ak:sk@s3"}, "must not carry credentials"),
        ({"PIPGATE_S3_PREFIX": "../x"}, "PIPGATE_S3_PREFIX"),
        ({"PIPGATE_COORDINATION": "redis"}, "coordination.url: required"),
        (REDIS, "coordination.secret_env or coordination.secret_file: required"),
        ({**REDIS, "PIPGATE_FLEET_SECRET_ENV": "S", "S": "short"}, "at least 16 characters"),
        ({"PIPGATE_REDIS_URL": "redis://:pw@host:6379"}, "must not carry a password"),
        ({"PIPGATE_REDIS_URL": "http://host"}, "expected a URL like redis://"),
        ({"PIPGATE_REPLICA": "has space"}, "PIPGATE_REPLICA: expected a name"),
        ({"PIPGATE_LEASE_TTL": "0.1"}, "coordination.lease_ttl: must be at least 1s"),
        ({"PIPGATE_S3_ACCESS_KEY_ENV": "AK", "AK": "x"}, "set both or neither"),
        ({"PIPGATE_S3_SECRET_KEY_ENV": "NOPE"}, "environment variable NOPE is not set"),
    ],
)
def test_bad_fleet_settings_are_one_line_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_fleet_secrets_are_read_and_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "fleet"
    secret.write_text("s3cr3t-fleet-value-123\n")
    config = load_config(
        env={
            **REDIS,
            "PIPGATE_FLEET_SECRET_FILE": str(secret),
            "PIPGATE_STORAGE": "s3",
            "PIPGATE_S3_BUCKET": "pipgate",
            "PIPGATE_S3_ACCESS_KEY_ENV": "AK",
            "PIPGATE_S3_SECRET_KEY_ENV": "SK",
            "AK": "AKIDEXAMPLE",
            "SK": "very-secret-key",
            "PIPGATE_REPLICA": "pipgate-2",
        }
    )
    assert config.fleet_secret == "s3cr3t-fleet-value-123"
    assert (config.s3_access_key, config.s3_secret_key) == ("AKIDEXAMPLE", "very-secret-key")
    assert config.replica == "pipgate-2"
    shown = repr(config)
    assert "s3cr3t-fleet-value-123" not in shown and "very-secret-key" not in shown


def test_the_default_replica_name_is_the_host_name_made_valid() -> None:
    config = load_config(env={})
    assert config.replica and all(c.isalnum() or c in "._-" for c in config.replica)


async def test_shared_eviction_removes_the_least_recently_used_beyond_the_cap(
    tmp_path: Path,
) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    store = SharedDirectory(root)
    await store.start()
    coordinator = LocalCoordinator()
    blobs = []
    for n in range(4):
        data = bytes([n]) * 1000
        sha = hashlib.sha256(data).hexdigest()
        path = tmp_path / f"b{n}"
        path.write_bytes(data)
        assert await store.put(sha, path)
        await coordinator.touch(sha, len(data), when=100.0 + n)
        blobs.append(sha)
    await coordinator.touch(blobs[0], 1000, when=200.0)  # used again: now the newest
    evictor = SharedEvictor(store, coordinator, 2500, Metrics())
    assert await evictor.once() == 2
    present = [await store.stat(sha) is not None for sha in blobs]
    assert present == [True, False, False, True]
    assert await coordinator.total_size() == 2000
    assert await evictor.once() == 0  # under the cap now
    await store.close()
