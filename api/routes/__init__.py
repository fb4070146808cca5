"""Routes that live in their own modules (registered by api.app)."""
