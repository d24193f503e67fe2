"""Kafka feedback to fresh lists: the source, the checkpoint, one micro-batch, the query and
its restart supervisor."""
