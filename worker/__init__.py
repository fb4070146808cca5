"""captionq worker."""
