"""The online store of the lists and publishing to it."""
