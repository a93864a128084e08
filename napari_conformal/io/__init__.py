"""Dataset store, readers and writers."""
