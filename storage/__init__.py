"""captionq storage."""
