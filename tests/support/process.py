"""What every server the tests start as a process shares: a log file and ``with``."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self


class ServiceProcess:
    """A server process with ``start()``/``stop()`` and its output in ``log_path``."""

    log_path: Path

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process printed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
