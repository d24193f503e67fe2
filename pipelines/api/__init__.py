"""The HTTP API over the online store, and its exposure log."""
