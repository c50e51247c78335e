"""Fault tests: the real stack as separate processes, with processes and NATS nodes killed under load."""
