"""A ChronoScore shard node: rank indexes over the users it owns."""
