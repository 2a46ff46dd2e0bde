"""Floor 1: what every other floor may use (errors, context, specs, metrics, callables, CPU)."""
