"""Search, analytics and rules end to end: calls transcribed by a real worker, indexed when stored,
searched over HTTP (stemming, phrases, exclusions, filters, pages, groups, tenants), measured, and
flagged by rules with a signed ``job.flagged`` webhook."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select
from standardwebhooks import Webhook

from shared.db.models import Tenant, TranscriptPhrase
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from shared.platform import analytics
from tests.api.test_api import assert_error, auth, submit, wait_final
from tests.conftest import Proc, make_key, serving
from tests.worker.test_webhooks import Receiver

# (agent phrases, client phrases, client lead, metadata)
CALLS = {
    "a.wav": (["здравствуйте чем могу помочь", "ваш договор готов"], ["я хочу расторгнуть договора"], 5.0,
              {"agent": "Иванов", "region": "север"}),
    "b.wav": (["добрый день"], ["спасибо за договором"], 1.5,
              {"agent": "Петров", "region": "север", "queue": 3}),
    "c.wav": (["алло"], ["ничего не нужно"], 4.0, {"agent": "Иванов", "region": "юг"}),
}  # fmt: skip


def stereo(path: Path, agent: list[str], client: list[str], lead: float) -> Path:
    left, _ = synthesize(agent, lead=0.6, pause=5.0)
    right, _ = synthesize(client, lead=lead)
    audio = np.zeros((max(len(left), len(right)), 2), np.int16)
    audio[: len(left), 0] = left
    audio[: len(right), 1] = right
    sf.write(path, audio, 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serving(Receiver()) as srv:
        yield srv


@pytest.fixture(scope="module")
def tenant(servers: dict[str, str]) -> tuple[str, str]:
    """A tenant of its own (key, webhook secret): these tests count its hits exactly."""
    name = f"search-{uuid.uuid4().hex[:6]}"
    key = make_key(servers, name)
    with session_scope(servers["DATABASE_URL"]) as db:
        secret = db.scalar(select(Tenant.webhook_secret).where(Tenant.name == name))
    assert secret
    return key, secret


@pytest.fixture(scope="module")
def corpus(
    api: Proc,
    worker: Proc,
    servers: dict[str, str],
    tenant: tuple[str, str],
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Rules first, then three calls of this tenant and one mono call of another tenant, all completed."""
    key = tenant[0]
    rules = {
        "leave": {"name": "threat to leave", "kind": "phrase_contains",
                  "params": {"words": ["расторгнуть договор"], "channel": 1}},
        "greeting": {"name": "no greeting", "kind": "missing_in_first",
                     "params": {"words": ["здравствуйте", "добрый день"], "seconds": 5, "channel": 0}},
        "silence": {"name": "long silence", "kind": "silence_over", "params": {"seconds": 2.5}},
    }  # fmt: skip
    rule_ids = {}
    for name, body in rules.items():
        r = httpx.post(f"{api.url}/v1/rules", json=body, headers=auth(key), timeout=10)
        assert r.status_code == 201, r.text
        rule_ids[name] = r.json()["id"]
    hook = receiver.script((200, {}))
    folder = tmp_path_factory.mktemp("search-calls")
    jobs = {}
    for name, (agent, client, lead, meta) in CALLS.items():
        path = stereo(folder / name, agent, client, lead)
        r = submit(api.url, key, path, channels="split", metadata=meta, webhook_url=hook)
        assert r.status_code == 202, r.text
        jobs[name] = r.json()["id"]
    mono, _ = synthesize(["договор подписан"])
    other_path = folder / "other.wav"
    sf.write(other_path, mono, 8000, subtype="PCM_16")
    other = make_key(servers, f"search-other-{uuid.uuid4().hex[:6]}")
    other_job = submit(api.url, other, other_path).json()["id"]
    for job_id in [*jobs.values(), other_job]:
        assert wait_final(api.url, key if job_id != other_job else other, job_id)["status"] == "completed"
    return {"jobs": jobs, "other_key": other, "other_job": other_job, "rules": rule_ids, "hook": hook}


def search(api: Proc, key: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{api.url}/v1/search", params=params, headers=auth(key), timeout=10)


def names(body: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((h["name"], h["channel"]) for h in body["data"])


def test_words_are_stemmed_and_only_the_callers_phrases_are_found(
    api: Proc, tenant: tuple[str, str], corpus: dict[str, Any]
) -> None:
    body = search(api, tenant[0], q="договор").json()
    # «договор», «договора», «договором» — the other tenant's «договор подписан» is not there
    assert names(body) == [("a.wav", 0), ("a.wav", 1), ("b.wav", 1)]
    texts = {h["text"] for h in body["data"]}
    assert texts == {"ваш договор готов", "я хочу расторгнуть договора", "спасибо за договором"}
    hit = next(h for h in body["data"] if h["text"] == "спасибо за договором")
    assert hit["highlight"] == "спасибо за <mark>договором</mark>"
    assert hit["marks"] == [[11, 20]] and hit["text"][11:20] == "договором"
    assert hit["job_id"] == corpus["jobs"]["b.wav"] and hit["metadata"]["agent"] == "Петров"
    assert 0 < hit["start"] < hit["end"] and hit["rank"] > 0
    other = search(api, corpus["other_key"], q="договор").json()["data"]
    assert [h["job_id"] for h in other] == [corpus["other_job"]]


def test_phrases_exclusions_channels_and_metadata_filter(
    api: Proc, tenant: tuple[str, str], corpus: dict[str, Any]
) -> None:
    key = tenant[0]
    assert names(search(api, key, q='"расторгнуть договор"').json()) == [("a.wav", 1)]
    assert names(search(api, key, q='"договор расторгнуть"').json()) == []  # the order matters
    assert names(search(api, key, q="договор -расторгнуть").json()) == [("a.wav", 0), ("b.wav", 1)]
    assert names(search(api, key, q="договор", channel=0).json()) == [("a.wav", 0)]
    assert names(search(api, key, **{"q": "договор", "metadata.agent": "Петров"}).json()) == [("b.wav", 1)]
    both = {"q": "договор", "metadata.agent": "Иванов", "metadata.region": "север"}
    assert names(search(api, key, **both).json()) == [("a.wav", 0), ("a.wav", 1)]
    assert names(search(api, key, **{"q": "договор", "metadata.agent": "Сидоров"}).json()) == []
    # a number in the metadata matches its written value (the text comparison, beside the index's @>)
    assert names(search(api, key, **{"q": "договор", "metadata.queue": "3"}).json()) == [("b.wav", 1)]
    assert names(search(api, key, **{"q": "договор", "metadata.queue": "4"}).json()) == []
    assert names(search(api, key, q="договор", min_duration=100).json()) == []
    assert names(search(api, key, q="договор", status="failed").json()) == []
    assert names(search(api, key, q="здравствуйте or алло").json()) == [("a.wav", 0), ("c.wav", 0)]


def test_pages_and_groups(api: Proc, tenant: tuple[str, str], corpus: dict[str, Any]) -> None:
    key = tenant[0]
    everything = search(api, key, q="договор").json()["data"]
    seen, cursor = [], None
    while True:
        page = search(api, key, q="договор", limit=1, **({"cursor": cursor} if cursor else {})).json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == everything and len(seen) == 3
    ranks = [h["rank"] for h in everything]
    assert ranks == sorted(ranks, reverse=True)
    groups = search(api, key, q="договор", group="job").json()
    counts = {g["name"]: g["count"] for g in groups["data"]}
    assert counts == {"a.wav": 2, "b.wav": 1}
    first = search(api, key, q="договор", group="job", limit=1).json()
    second = search(api, key, q="договор", group="job", limit=1, cursor=first["next_cursor"]).json()
    assert [g["job_id"] for g in first["data"] + second["data"]] == [g["job_id"] for g in groups["data"]]
    assert second["next_cursor"] is None


def test_bad_queries_get_clear_errors(api: Proc, tenant: tuple[str, str], corpus: dict[str, Any]) -> None:
    key = tenant[0]
    assert_error(search(api, key, q="  "), 400, "empty_query")
    assert_error(search(api, key, q="и на"), 400, "empty_query")  # stop words only
    assert_error(search(api, key, q="-договор"), 400, "query_needs_a_word")
    assert_error(search(api, key, q="договор", cursor="nonsense"), 400, "invalid_cursor")
    assert_error(search(api, key, q="договор", channel=2), 422, {"invalid_request", "validation_error"})
    assert_error(search(api, key, q="договор", batch_id="x"), 422, "invalid_request")
    assert_error(httpx.get(f"{api.url}/v1/search", headers=auth(key), timeout=10), 422,
                 {"invalid_request", "validation_error"})  # fmt: skip
    assert_error(httpx.get(f"{api.url}/v1/search", params={"q": "договор"}, timeout=10), 401, "unauthorized")


def test_analytics_are_stored_with_the_transcript_and_shown_on_the_job(
    api: Proc, tenant: tuple[str, str], corpus: dict[str, Any]
) -> None:
    key = tenant[0]
    job_id = corpus["jobs"]["a.wav"]
    job = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
    doc = httpx.get(f"{api.url}/v1/jobs/{job_id}/transcript", headers=auth(key), timeout=10).json()
    assert job["analytics"] == doc["analytics"] == analytics.compute(doc["phrases"], doc["duration"], 2)
    a = job["analytics"]
    assert a["channels"] == 2 and a["words"] == {"0": 7, "1": 4}
    # the client starts at 5.0 s, after the agent's first phrase ended, and ends before its second
    assert a["overtalk_time"] == 0 and a["interruptions"] == {"0": 0, "1": 0}
    assert a["reply_latency"]["1"] is not None and a["reply_latency"]["0"] is not None
    listed = httpx.get(f"{api.url}/v1/jobs", headers=auth(key), timeout=10).json()["data"]
    assert {j["id"]: j["analytics"] for j in listed}[job_id] == a


def test_rules_flag_jobs_send_signed_events_and_filter_search(
    api: Proc, tenant: tuple[str, str], corpus: dict[str, Any], receiver: Receiver
) -> None:
    key, secret = tenant
    rules, jobs = corpus["rules"], corpus["jobs"]
    flags = {}
    for name, job_id in jobs.items():
        job = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
        flags[name] = {f["rule_id"] for f in job["flags"]}
    assert rules["leave"] in flags["a.wav"] and rules["leave"] not in flags["b.wav"] | flags["c.wav"]
    # c.wav's agent greets with neither word within 5 s
    assert {n for n, f in flags.items() if rules["greeting"] in f} == {"c.wav"}
    # c.wav's client answers 2.8 s after the agent's «алло»; the other calls never pause that long
    assert {n for n, f in flags.items() if rules["silence"] in f} == {"c.wav"}
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = []
        for request in receiver.requests(corpus["hook"]):
            event = Webhook(secret).verify(request["body"], request["headers"])  # signed
            if event["type"] == "job.flagged":
                events.append(event)
        if len(events) == sum(len(f) for f in flags.values()):
            break
        time.sleep(0.3)
    got = sorted((e["data"]["id"], e["data"]["rule"]["id"]) for e in events)
    assert got == sorted((jobs[n], r) for n, f in flags.items() for r in f)
    leave = next(e for e in events if e["data"]["rule"]["id"] == rules["leave"])
    assert leave["data"]["details"]["phrases"][0]["text"] == "я хочу расторгнуть договора"
    assert names(search(api, key, q="договор", flag=rules["leave"]).json()) == [("a.wav", 0), ("a.wav", 1)]
    listed = {
        r["id"]: r["matches"] for r in httpx.get(f"{api.url}/v1/rules", headers=auth(key)).json()["data"]
    }
    assert listed[rules["leave"]] == 1 and listed[rules["greeting"]] == 1


def test_rules_are_validated_and_per_tenant(
    api: Proc, tenant: tuple[str, str], corpus: dict[str, Any]
) -> None:
    key = tenant[0]
    bad = [
        {"name": "x", "kind": "phrase_contains", "params": {"words": []}},
        {"name": "x", "kind": "phrase_contains", "params": {"words": ["да"], "channel": 3}},
        {"name": "x", "kind": "silence_over", "params": {"seconds": "long"}},
        {"name": "x", "kind": "overtalk_share_over", "params": {"share": 2}},
    ]
    for body in bad:
        assert_error(httpx.post(f"{api.url}/v1/rules", json=body, headers=auth(key)), 422, "invalid_rule")
    unknown = httpx.post(f"{api.url}/v1/rules", json={"name": "x", "kind": "nope"}, headers=auth(key))
    assert_error(unknown, 422, {"invalid_request", "validation_error"})
    rule = corpus["rules"]["silence"]
    assert_error(httpx.get(f"{api.url}/v1/rules/{rule}", headers=auth(corpus["other_key"])), 404, "not_found")
    assert_error(
        httpx.delete(f"{api.url}/v1/rules/{rule}", headers=auth(corpus["other_key"])), 404, "not_found"
    )


def test_a_rule_applied_to_existing_calls_flags_what_it_would_have_flagged(
    api: Proc, tenant: tuple[str, str], corpus: dict[str, Any]
) -> None:
    """``apply_to_existing`` (bulk SQL over the archive) flags exactly the jobs, with the same details,
    as the same rule checked when each transcript was stored."""
    key = tenant[0]
    jobs = {v: k for k, v in corpus["jobs"].items()}

    def flagged_by(rule_id: str) -> dict[str, Any]:
        out = {}
        for job_id in jobs:
            job = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(key)).json()
            for f in job["flags"]:
                if f["rule_id"] == rule_id:
                    out[jobs[job_id]] = f["details"]
        return out

    bodies = {
        "leave": {"kind": "phrase_contains", "params": {"words": ["расторгнуть договор"], "channel": 1}},
        "greeting": {"kind": "missing_in_first",
                     "params": {"words": ["здравствуйте", "добрый день"], "seconds": 5, "channel": 0}},
        "silence": {"kind": "silence_over", "params": {"seconds": 2.5}},
    }  # fmt: skip
    for name, body in bodies.items():
        archive = {"name": f"{name} (archive)", **body, "apply_to_existing": True}
        r = httpx.post(f"{api.url}/v1/rules", json=archive, headers=auth(key))
        assert r.status_code == 201, r.text
        expected = flagged_by(corpus["rules"][name])
        assert r.json()["matches"] == len(expected) > 0
        assert flagged_by(r.json()["id"]) == expected, name
    body = {
        "name": "any overtalk",
        "kind": "overtalk_share_over",
        "params": {"share": 0},
        "apply_to_existing": True,
    }
    r = httpx.post(f"{api.url}/v1/rules", headers=auth(key), json=body)
    assert r.status_code == 201, r.text
    overtalk = {}
    for job_id, name in jobs.items():
        a = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(key)).json()["analytics"]
        if a["overtalk_time"] / a["speech_time"] > 0:
            overtalk[name] = {"overtalk_share": round(a["overtalk_time"] / a["speech_time"], 4)}
    assert overtalk and flagged_by(r.json()["id"]) == overtalk and r.json()["matches"] == len(overtalk)


def test_deleting_a_job_removes_its_index_rows_and_a_deleted_rule_its_flags(
    api: Proc, tenant: tuple[str, str], corpus: dict[str, Any], servers: dict[str, str]
) -> None:
    key = tenant[0]
    job_id = corpus["jobs"]["c.wav"]

    def rows() -> int:
        with session_scope(servers["DATABASE_URL"]) as db:
            return db.scalar(select(func.count()).where(TranscriptPhrase.job_id == uuid.UUID(job_id))) or 0

    assert rows() == 2
    assert httpx.delete(f"{api.url}/v1/jobs/{job_id}", headers=auth(key)).status_code == 204
    assert rows() == 0
    assert names(search(api, key, q="алло").json()) == []
    rule = corpus["rules"]["greeting"]
    assert httpx.delete(f"{api.url}/v1/rules/{rule}", headers=auth(key)).status_code == 204
    assert_error(httpx.get(f"{api.url}/v1/rules/{rule}", headers=auth(key)), 404, "not_found")


def test_a_batch_aggregates_its_calls_analytics_per_agent_and_its_zip_has_analytics_csv(
    api: Proc, worker: Proc, tenant: tuple[str, str], tmp_path: Path
) -> None:
    import csv
    import io
    import zipfile

    from tests.api.test_batches import post_batch, wait_batch_done

    key = tenant[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, (agent, client, lead, _) in CALLS.items():
            zf.write(stereo(tmp_path / name, agent, client, lead), f"calls/{name}")
        zf.writestr("metadata.csv", "path,agent,region\n" + "".join(
            f"calls/{n},{m['agent']},{m['region']}\n" for n, (*_, m) in CALLS.items()
        ))  # fmt: skip
    r = post_batch(api.url, key, buf.getvalue(), channels="split")
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    wait_batch_done(api.url, key, batch_id)
    items = httpx.get(f"{api.url}/v1/batches/{batch_id}/items", headers=auth(key)).json()["items"]
    measured = {}
    for item in items:
        job = httpx.get(f"{api.url}/v1/jobs/{item['job_id']}", headers=auth(key)).json()
        measured[item["name"]] = analytics.flat(job["analytics"])
    assert len(measured) == 3

    body = httpx.get(f"{api.url}/v1/batches/{batch_id}/analytics", headers=auth(key)).json()
    assert (
        body["calls"] == 3
        and body["group_by"] == "agent"
        and body["metadata_columns"] == ["agent", "path", "region"]
    )
    talk = [m["talk_time_agent"] for m in measured.values()]
    assert body["measures"]["talk_time_agent"]["sum"] == pytest.approx(sum(talk), abs=1e-3)
    assert body["measures"]["talk_time_agent"]["p50"] == pytest.approx(float(np.median(talk)), abs=1e-3)
    assert body["measures"]["overtalk_time"]["max"] == pytest.approx(
        max(m["overtalk_time"] for m in measured.values()), abs=1e-3
    )
    groups = {g["value"]: g for g in body["groups"]}
    assert {v: g["calls"] for v, g in groups.items()} == {"Иванов": 2, "Петров": 1}
    ivanov = [measured[f"calls/{n}"]["words_agent"] for n in ("a.wav", "c.wav")]
    assert groups["Иванов"]["measures"]["words_agent"]["mean"] == pytest.approx(np.mean(ivanov), abs=1e-3)
    by_region = httpx.get(f"{api.url}/v1/batches/{batch_id}/analytics", params={"group_by": "region"},
                          headers=auth(key)).json()  # fmt: skip
    assert {g["value"]: g["calls"] for g in by_region["groups"]} == {"север": 2, "юг": 1}
    assert_error(httpx.get(f"{api.url}/v1/batches/{batch_id}/analytics", params={"group_by": "nope"},
                           headers=auth(key)), 422, "invalid_request")  # fmt: skip

    zipped = httpx.get(
        f"{api.url}/v1/batches/{batch_id}/results", params={"format": "zip"}, headers=auth(key)
    )
    raw = zipfile.ZipFile(io.BytesIO(zipped.content)).read("analytics.csv")
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM: Excel reads the Cyrillic right
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig")), delimiter=";"))
    assert sorted(r["name"] for r in rows) == sorted(measured)
    for row in rows:
        assert row["agent"] == CALLS[row["name"].removeprefix("calls/")][3]["agent"]
        expected = measured[row["name"]]
        for column in analytics.FLAT_COLUMNS:
            value = expected[column]
            assert row[column] == ("" if value is None else f"{value:g}".replace(".", ",")), column
