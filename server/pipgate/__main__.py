"""Allow ``python -m pipgate``."""

from pipgate.cli import main

raise SystemExit(main())
