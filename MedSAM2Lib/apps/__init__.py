"""What runs from the command line: segment, batch, evaluate, demo, and volume file I/O."""
