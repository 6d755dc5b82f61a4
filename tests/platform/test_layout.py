"""The layout's arrows: API -> shared <- worker, and the engine on its own (README, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each file of ``package`` imports (absolute names; relative ones resolved)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module if not node.level else f"{package}.{node.module}")
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{where} imports {name}"
        for where, names in imported_modules(package).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_nothing_under_api_imports_the_worker() -> None:
    assert offenders("api", ("worker",)) == []


def test_the_engine_imports_no_web_queue_database_or_settings_code() -> None:
    forbidden = (
        "api", "worker", "fastapi", "starlette", "celery", "kombu", "redis", "sqlalchemy",
        "shared.db", "shared.platform", "shared.queue", "shared.cli", "shared.localstack",
    )  # fmt: skip
    assert offenders("shared/asr", forbidden) == []


def test_the_text_package_imports_no_web_queue_database_or_engine_code() -> None:
    forbidden = (
        "api", "worker", "fastapi", "starlette", "celery", "kombu", "redis", "sqlalchemy", "numpy",
        "shared.asr", "shared.db", "shared.platform", "shared.queue", "shared.cli", "shared.localstack",
    )  # fmt: skip
    assert offenders("shared/text", forbidden) == []
    assert imported_modules("shared/text")["shared/text/display.py"]  # the walk sees its imports


def test_shared_code_never_imports_the_api() -> None:
    assert offenders("shared", ("api",)) == []


def test_the_checker_sees_imports() -> None:
    # the checks above would pass vacuously if the walk found nothing
    assert "shared.queue" in imported_modules("worker")["worker/celery_app.py"]
    assert any("shared.queue" in names for names in imported_modules("api").values())
    assert Path(ROOT / "api" / "main.py").is_file()


def test_the_engine_exports_its_public_surface_and_loads_it_lazily() -> None:
    import subprocess
    import sys

    import shared.asr as asr

    for name in asr.__all__:
        assert getattr(asr, name) is not None, name
    assert asr.Recognizer.__module__ == "shared.asr.engine"
    assert issubclass(asr.ModelNotFoundError, asr.ToneError)
    # the API and the batch client read formats and types without loading ONNX Runtime
    probe = "import sys, shared.asr.formats, shared.asr.types; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_every_coded_error_shares_one_base() -> None:
    from api.errors import ApiError
    from api.routes.websocket import CloseError
    from shared.asr.errors import ToneError
    from shared.errors import CodedError
    from shared.platform.netguard import UrlError
    from shared.platform.sessions import SessionError

    for kind in (ApiError, CloseError, ToneError, UrlError, SessionError):
        assert issubclass(kind, CodedError), kind
    err = UrlError("url_forbidden", "no")
    assert (err.code, err.message, str(err)) == ("url_forbidden", "no", "no")


def test_the_engines_all_lists_every_export() -> None:
    import shared.asr as asr

    assert sorted(asr.__all__) == sorted(asr._EXPORTS)
