"""captionq api."""
