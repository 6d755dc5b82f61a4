"""``python -m api``: the HTTP API does not exist yet; say so and exit 0."""

import sys

MESSAGE = (
    "tone-platform: the HTTP API arrives with the job-platform issue; this image has nothing to serve yet.\n"
    "To transcribe today, use the worker image's CLI: docker compose run --rm worker transcribe /audio/FILE\n"
)


def main() -> int:
    sys.stdout.write(MESSAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
