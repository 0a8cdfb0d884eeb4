"""Built-in operation handlers, one module each (registered on import by engine.registry)."""
