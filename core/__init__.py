"""Shared domain plumbing: settings, the error hierarchy, database access, logging."""
