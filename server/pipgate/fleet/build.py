"""The fleet parts ``[storage]`` and ``[coordination]`` ask for, built from the config.

The S3 and Redis clients are imported only when configured: the default (one host,
disk, local) needs neither library.
"""

from __future__ import annotations

import socket

from pipgate.config import Config
from pipgate.fleet.coordinator import Coordinator, LocalCoordinator
from pipgate.fleet.fleet import Fleet
from pipgate.fleet.peers import PeerClient
from pipgate.metrics import Metrics
from pipgate.store.blobs import BlobStore
from pipgate.store.shared import SharedBlobs, StorageError


def advertise_url(config: Config) -> str:
    """Where the other replicas reach this one."""
    if config.advertise_url:
        return config.advertise_url.rstrip("/")
    scheme = "https" if config.tls_cert else "http"
    return f"{scheme}://{socket.gethostname()}:{config.port}"


def shared_store(config: Config) -> SharedBlobs | None:
    """The shared blob store of ``config`` (not started), if any."""
    if config.storage_kind == "s3":
        # Without aiobotocore, S3Blobs itself refuses with the install hint.
        from pipgate.store.s3 import S3Blobs, S3Settings

        return S3Blobs(
            S3Settings(
                endpoint_url=config.s3_endpoint,
                bucket=config.s3_bucket,
                prefix=config.s3_prefix,
                region=config.s3_region,
                path_style=config.s3_path_style,
                access_key=config.s3_access_key,
                secret_key=config.s3_secret_key,
                verify_tls=config.s3_verify,
                ca_bundle=config.s3_ca_bundle,
            )
        )
    if config.storage_kind == "directory":
        from pipgate.store.shared_dir import SharedDirectory

        assert config.shared_directory is not None
        return SharedDirectory(config.shared_directory)
    return None


def coordinator(config: Config) -> Coordinator:
    """The coordinator of ``config`` (not started)."""
    if config.coordination_kind != "redis":
        return LocalCoordinator(config.replica)
    try:
        from pipgate.fleet.redis import RedisCoordinator, RedisSettings
    except ImportError as exc:
        raise FleetError(
            f"coordination.kind = redis needs redis-py: pip install 'pipgate[scale]' ({exc})"
        ) from None
    assert config.redis_url is not None
    return RedisCoordinator(
        RedisSettings(
            url=config.redis_url,
            username=config.redis_username,
            password=config.redis_password,
            lease_ttl=config.lease_ttl,
        ),
        replica=config.replica,
        advertise_url=advertise_url(config),
    )


def build_fleet(config: Config, blobs: BlobStore, metrics: Metrics) -> Fleet:
    """This replica's :class:`Fleet` (not started)."""
    metrics.initialise_fleet()
    metrics.replica_info.labels(
        replica=config.replica, storage=config.storage_kind, coordination=config.coordination_kind
    ).set(1)
    if config.storage_kind == "disk" and config.coordination_kind == "local":
        return Fleet(blobs=blobs, metrics=metrics)
    peers = None
    if config.coordination_kind == "redis":
        assert config.fleet_secret is not None
        peers = PeerClient(config.fleet_secret, metrics)
    return Fleet(
        blobs=blobs,
        metrics=metrics,
        coordinator=coordinator(config),
        shared=shared_store(config),
        peers=peers,
        advertise_url=advertise_url(config),
        lease_ttl=config.lease_ttl,
    )


class FleetError(Exception):
    """The shared store or the coordination cannot be used as configured (one line)."""


async def preflight(config: Config) -> None:
    """Start and stop the shared store and the coordinator once, before serving: a
    store that ignores create-only writes, a missing bucket or a wrong Redis password
    stops ``pipgate serve`` with one line (:class:`FleetError`). An unreachable Redis
    does not: replicas fetch on their own until it answers."""
    try:
        store = shared_store(config)
        if store is not None:
            try:
                await store.start()
            finally:
                await store.close()
    except StorageError as exc:
        raise FleetError(f"storage error: {exc}") from None
    coord = coordinator(config)
    try:
        await coord.start()
    except Exception as exc:
        from pipgate.fleet.redis import RedisConfigError

        if isinstance(exc, RedisConfigError):
            raise FleetError(f"coordination error: {exc}") from None
        raise
    finally:
        await coord.close()
