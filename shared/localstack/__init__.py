"""The platform on one machine without Docker: local PostgreSQL and Redis servers from PyPI wheels
(:mod:`.servers`) and the process supervisor behind ``tone-platform up/down`` (:mod:`.supervisor`)."""
