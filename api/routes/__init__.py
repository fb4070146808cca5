"""HTTP routes, one module per resource; api.app registers each module's ``router``."""
