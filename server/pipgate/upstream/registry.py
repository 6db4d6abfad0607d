"""The configured upstreams, in their order, each with its own client."""

from __future__ import annotations

from collections.abc import Iterator

from pipgate.config import Config
from pipgate.metrics import Metrics
from pipgate.upstream.client import ClientLimits, UpstreamClient
from pipgate.upstream.local import LocalIndexClient


class Upstreams:
    """Name -> :class:`UpstreamClient`, in configuration order (the default route)."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        limits = ClientLimits.of(config)
        self._clients = {
            u.name: (LocalIndexClient if u.url.startswith("file:") else UpstreamClient)(
                u, metrics, offline=config.offline, limits=limits
            )
            for u in config.upstreams
        }

    def __getitem__(self, name: str) -> UpstreamClient:
        return self._clients[name]

    def __iter__(self) -> Iterator[UpstreamClient]:
        return iter(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._clients)

    async def start(self) -> None:
        """Open every client's session."""
        for client in self:
            await client.start()

    async def close(self) -> None:
        """Close every client's session."""
        for client in self:
            await client.close()
