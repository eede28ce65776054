"""The ChronoScore coordinator: the public API in front of the shards."""
