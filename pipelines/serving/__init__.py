"""What a list is made from (the serving model) and how (the one list policy, popularity)."""
