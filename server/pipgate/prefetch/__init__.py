"""``pipgate prefetch``: warm the cache from lock files, requirements and install targets."""
