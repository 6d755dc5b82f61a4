"""The T-one engine: audio in, phrases out. No web, queue, DB or settings imports live here."""
