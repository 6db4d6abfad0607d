"""Carrying a cache across an air gap: ``pipgate export`` and ``pipgate import``."""
