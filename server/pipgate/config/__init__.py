"""One typed, frozen configuration object for every subcommand.

:mod:`.schema` declares every key once (and the objects built from them), :mod:`.values`
parses raw values, :mod:`.load` merges defaults < TOML < environment < flags.
"""

from pipgate.config.load import ConfigError, load_config, split_credentials
from pipgate.config.schema import (
    ENV_PREFIX,
    FLEET_SETTINGS,
    POLICY_RULE_SETTINGS,
    ROUTE_SETTINGS,
    SERVER_SETTINGS,
    SETTINGS,
    UPSTREAM_SETTINGS,
    Config,
    PolicyRule,
    RouteConfig,
    Secrets,
    Setting,
    UpstreamConfig,
    origin_of,
)
from pipgate.config.values import parse_duration, parse_size

__all__ = [
    "ENV_PREFIX",
    "FLEET_SETTINGS",
    "POLICY_RULE_SETTINGS",
    "ROUTE_SETTINGS",
    "SERVER_SETTINGS",
    "SETTINGS",
    "UPSTREAM_SETTINGS",
    "Config",
    "ConfigError",
    "PolicyRule",
    "RouteConfig",
    "Secrets",
    "Setting",
    "UpstreamConfig",
    "load_config",
    "origin_of",
    "parse_duration",
    "parse_size",
    "split_credentials",
]
