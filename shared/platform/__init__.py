"""The platform's own logic, used by the API and the workers alike: settings, API keys, live
sessions' state in Redis, the SSRF guard, batch accounting. No web framework, no Celery."""
