"""Operating a lakehouse: its status and alerts (above the batch and streaming layers, which
it reads)."""
