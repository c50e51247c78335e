"""Reference agency systems, the sample directory and the demo scenario."""

from agencies._demo import DEFAULT_DIRECTORY, DemoConfig, DemoReport, run_demo

__all__ = ["DEFAULT_DIRECTORY", "DemoConfig", "DemoReport", "run_demo"]
