"""captionq cli."""
