"""The platform's database: SQLAlchemy 2 models (``models``) and sessions (``session``)."""
