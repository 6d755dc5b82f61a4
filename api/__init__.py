"""The HTTP API of tone-platform (FastAPI): jobs, the OpenAI-compatible call, the original service's
endpoints, health and metrics. It imports no engine model code: recognition runs in the workers.
"""
