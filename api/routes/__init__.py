"""The API's routers: jobs (/v1/jobs), OpenAI-compatible (/v1/audio), legacy (/, /transcribe), health."""
