"""Supply-chain policy: rules, release cooldown and quarantine, applied as a page
filter (:mod:`.filter`) around the routed page source."""
