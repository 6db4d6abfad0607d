"""Whether an upstream is usable: consecutive failures mark it down for a cool-down.

While it is down, requests to it fail at once instead of waiting for timeouts (cached
pages and files are still served), ``/readyz`` says so and ``pipgate_upstream_up`` is 0;
after the cool-down the next request probes it again.
"""

from __future__ import annotations

import logging
import time

from pipgate.errors import Reason, UpstreamError
from pipgate.metrics import Metrics

log = logging.getLogger("pipgate.upstream")

#: Failures that say the upstream cannot be reached; a 404 or a bad file does not.
CONNECTIVITY = frozenset(
    {
        Reason.TIMEOUT,
        Reason.DNS,
        Reason.CONNECT,
        Reason.TLS,
        Reason.PROXY_CONNECT,
        Reason.PROXY_AUTH,
        Reason.HTTP_5XX,
    }
)


class UpstreamHealth:
    """Consecutive-failure counting for one upstream."""

    def __init__(self, name: str, down_after: int, cooldown: float, metrics: Metrics) -> None:
        self.name = name
        self._down_after = down_after
        self._cooldown = cooldown
        self._metrics = metrics
        self._consecutive = 0
        self._down_until = 0.0
        #: The last failure, for ``/readyz`` (reason and a credential-free detail).
        self.last_error: UpstreamError | None = None

    @property
    def is_down(self) -> bool:
        """Whether the upstream is in its cool-down after repeated failures."""
        return time.monotonic() < self._down_until

    def check(self) -> None:
        """Raise at once while the upstream is marked down."""
        if self.is_down:
            last = self.last_error.reason.value if self.last_error else "unknown"
            raise UpstreamError(
                Reason.CONNECT,
                f"upstream {self.name} is marked down after repeated failures ({last}); "
                "it will be probed again shortly",
            )

    def succeeded(self) -> None:
        if self._consecutive >= self._down_after:
            log.info("upstream %s is reachable again", self.name)
        self._consecutive = 0
        self._down_until = 0.0
        self._metrics.upstream_up.labels(upstream=self.name).set(1)

    def failed(self, error: UpstreamError) -> None:
        self.last_error = error
        if error.reason not in CONNECTIVITY:
            return
        self._consecutive += 1
        if self._consecutive >= self._down_after:
            self._down_until = time.monotonic() + self._cooldown
            self._metrics.upstream_up.labels(upstream=self.name).set(0)
            log.error(
                "upstream %s marked down for %.0fs after %d consecutive failures (last: %s)",
                self.name,
                self._cooldown,
                self._consecutive,
                error.reason.value,
            )
