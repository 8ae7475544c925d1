"""Process model: the leader, shard assignment and supervision of child processes."""
