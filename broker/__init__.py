"""GreenChannel broker: protocol core (broker.protocol), the hub service and the CLI."""
