"""Operations on a whole repository: verify, retention, prune, and the demo."""
