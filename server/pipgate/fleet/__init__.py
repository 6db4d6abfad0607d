"""Several replicas as one cache: a shared blob store, leases and a shared catalog."""
