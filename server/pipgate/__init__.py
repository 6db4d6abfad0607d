"""pipgate: a caching, verifying PyPI proxy for firewalled networks."""

__version__ = "0.1.0"
