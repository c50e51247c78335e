"""Agency-side adapters."""
