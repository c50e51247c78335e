"""Reference agency systems, the sample directory and the demo scenario."""
