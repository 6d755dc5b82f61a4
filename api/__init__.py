"""The HTTP API of tone-platform: job submission, status and results over FastAPI.

It arrives with the job-platform issue; today this package holds only ``python -m api``, which says so.
The API image carries no model and no onnxruntime: recognition runs in the worker image.
"""
