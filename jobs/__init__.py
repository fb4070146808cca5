"""captionq jobs."""
