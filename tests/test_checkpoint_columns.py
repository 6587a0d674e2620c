"""Checkpoint format 2: the live requests and the outcome record stored by column (base64
of little-endian arrays) instead of one JSON object per request; format 1 files (written
by capsched before 2026-11-29) are still read."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _checkpoint_forge import request_rows

from capsched import CheckpointError, Config, Device, InferenceRequest, Scheduler
from capsched.checkpoint import REQUEST_COLUMNS, VERSION, _canonical

DATA = Path(__file__).parent / "data"


def busy() -> tuple[Scheduler, dict[str, int]]:
    """Requests in every live state: queued, waiting on two others, in flight, retrying;
    a deadline-class one, one with a pool and uclamp, two tenants and a request class."""
    devices = [Device("a", capacity=2.0, pool="p"), Device("b")]
    s = Scheduler(devices, max_batch_size=2, config=Config(max_retries=3), clock=lambda: 0.0)
    ids = {}
    ids["first"] = s.submit(InferenceRequest(prompt_tokens=10, tenant="alice", timeout=30.0), now=0.0)
    ids["second"] = s.submit(InferenceRequest(prompt_tokens=11, request_class="chat"), now=0.0)
    ids["retry"] = s.submit(InferenceRequest(prompt_tokens=12, priority=0.9), now=0.0)
    for b in s.step(now=0.1).batches:
        for rid in b.request_ids:
            if rid == ids["retry"]:
                s.fail(rid, now=0.2, retryable=True, error="oom")
    ids["waiting"] = s.submit(
        InferenceRequest(prompt_tokens=13, depends_on=[ids["first"], ids["second"]], tenant="bob"), now=0.3)
    ids["pooled"] = s.submit(InferenceRequest(prompt_tokens=14, pool="p", uclamp_min=0.1, uclamp_max=0.5), now=0.3)
    ids["deadline"] = s.submit(InferenceRequest(prompt_tokens=15, sched_class="deadline", timeout=50.0), now=0.3)
    s.submit_many(np.arange(1, 40), now=0.4)
    return s, ids


def _doc(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _resign(doc: dict) -> str:
    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    return json.dumps(doc)


def test_the_requests_are_stored_by_column_and_restore_exactly(tmp_path: Path) -> None:
    s, ids = busy()
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    doc = _doc(path)
    assert doc["version"] == VERSION == 2
    core = doc["payload"]["core"]
    assert core["version"] == 2 and set(core["requests"]["columns"]) == set(REQUEST_COLUMNS)
    assert core["requests"]["count"] == s.stats()["accepted"] - s.stats()["completed"]
    rows = {r["id"]: r for r in request_rows(core)}
    assert sorted(rows[ids["waiting"]]["waits_on"]) == sorted([ids["first"], ids["second"]])
    assert rows[ids["pooled"]]["uclamp_max"] == 0.5 and rows[ids["first"]]["deadline"] == pytest.approx(30.0)
    # The same rows as format 1 would have held them: the core's own export.
    assert list(rows.values()) == s._core.export_state()["requests"]
    r = Scheduler.restore(path, clock=lambda: 0.0)
    assert r.check_invariants() and r.stats()["conservation_ok"]
    # Restore queues what was in flight again; apart from that the state is the same.
    assert s.status(ids["first"]) == "in_flight" and r.status(ids["first"]) == "queued"
    s._core.requeue_in_flight(s._core.stats()["now"])
    assert r._core.export_state() == s._core.export_state()
    assert {k: r.status(v) for k, v in ids.items()} == {k: s.status(v) for k, v in ids.items()}


def test_a_file_is_a_few_hundred_bytes_per_request(tmp_path: Path) -> None:
    s = Scheduler(["a", "b"], clock=lambda: 0.0)
    s.submit_many(np.arange(1, 20_001), now=0.0)
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    per_request = path.stat().st_size / 20_000
    assert 150 < per_request < 220  # (153 bytes of columns, base64: 4/3 of them; format 1 wrote about 400)
    assert Scheduler.restore(path).stats()["queued"] == 20_000


def test_a_format_1_file_written_by_the_previous_capsched_still_restores(tmp_path: Path) -> None:
    # tests/data/checkpoint_v1.json: busy() checkpointed by capsched at b506cab (format 1,
    # one JSON object per request), with busy()'s ids in tests/data/checkpoint_v1.ids.json.
    doc = json.loads((DATA / "checkpoint_v1.json").read_bytes())
    assert doc["version"] == 1 and isinstance(doc["payload"]["core"]["requests"], list)
    old = Scheduler.restore(DATA / "checkpoint_v1.json", clock=lambda: 0.0)
    assert old.check_invariants() and old.stats()["conservation_ok"]
    s, ids = busy()
    assert json.loads((DATA / "checkpoint_v1.ids.json").read_text()) == ids
    s._core.requeue_in_flight(s._core.stats()["now"])
    assert old._core.export_state() == s._core.export_state()
    assert {k: old.status(v) for k, v in ids.items()} == {k: s.status(v) for k, v in ids.items()}
    # Written again, it is format 2, and restores to the same state.
    path = tmp_path / "again.ckpt"
    old.checkpoint(path)
    assert _doc(path)["version"] == 2
    assert Scheduler.restore(path)._core.export_state() == old._core.export_state()


def _canonical_document(doc: dict) -> bytes:
    """The document signed and laid out as save_checkpoint writes it (the reader's fast
    path checks the checksum on these bytes)."""
    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _busy_document(tmp_path: Path) -> tuple[Path, dict]:
    """busy()'s checkpoint: its path and its document."""
    s, _ = busy()
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    return path, _doc(path)


def _forge(tmp_path: Path, edit, canonical: bool = False) -> Path:
    path, doc = _busy_document(tmp_path)
    edit(doc["payload"]["core"])
    if canonical:
        path.write_bytes(_canonical_document(doc))
    else:
        path.write_text(_resign(doc))
    return path


def _b64(values, dtype: str) -> dict:
    return {"base64": base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode(), "dtype": dtype}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["requests"].update(count=-1), r"core\.requests\.count must be an integer in 0\.\.2\*\*32-1, got -1"),
        (lambda c: c["requests"].update(count=True), r"core\.requests\.count must be an integer in 0\.\.2\*\*32-1, got True"),
        (lambda c: c["requests"].update(count=9 * 10**4299), r"count must be an integer in 0\.\.2\*\*32-1, got an integer of 14285 bits"),
        (lambda c: c["requests"]["columns"].update(batchable=_b64([7] * 45, "|u1")), r"column 'batchable' must hold 0 or 1"),
        (lambda c: c.update(version=True), r"core state has an unknown version True"),
        (lambda c: c.update(version=1), r"a format 2 file holds a version 1 core state"),
        (lambda c: c["requests"].update(extra=1), r"core\.requests must be an object with keys 'columns' and 'count'"),
        (lambda c: c.update(requests=[]), r"core\.requests must be an object with keys 'columns' and 'count'"),
        (lambda c: c["requests"].update(columns=[]), r"core\.requests\.columns must be an object, got \[\]"),
        (lambda c: c["requests"]["columns"].update(pickle=_b64([1], "<u8")),
         r"core\.requests\.columns has unknown column\(s\) \['pickle'\]"),
        (lambda c: c["requests"]["columns"].update(id={"base64": "", "dtype": "<u8", "x": 1}),
         r"column 'id' must be an object with keys 'base64' and 'dtype'"),
        (lambda c: c["requests"]["columns"]["id"].update(base64=5), r"column 'id''s base64 must be a string, got 5"),
        (lambda c: c["requests"]["columns"].update(waits_on=_b64([1, 2, 3], "<u8")),
         r"column 'waits_on' holds 24 bytes, not 16 \(2 x 8-byte values\)"),
        (lambda c: c["requests"]["columns"].update(state=_b64([1], "|u1")), r"column 'state' holds 1 bytes, not"),
        (lambda c: c.update(outcomes=_b64([1], "<u4")), r"core\.outcomes must have dtype '<u8', got '<u4'"),
        (lambda c: c.update(outcomes={"base64": "AAAA", "dtype": "<u8"}),
         r"core\.outcomes holds 3 bytes, not a multiple of 8"),
        (lambda c: c.update(outcomes=[0]), r"core\.outcomes must be an object with keys 'base64' and 'dtype'"),
    ],
    ids=["count-negative", "count-bool", "count-4300-digits", "batchable-7", "core-version-bool",
         "core-version-1-in-format-2", "extra-key", "rows-in-format-2", "columns-list", "unknown-column",
         "column-extra-key", "base64-not-string", "waits-on-length", "state-length", "outcomes-type",
         "outcomes-length", "outcomes-list"],
)
@pytest.mark.parametrize("canonical", [False, True], ids=["general-path", "fast-path"])
def test_a_forged_column_is_refused_by_name(tmp_path: Path, edit, message, canonical) -> None:
    path = _forge(tmp_path, edit, canonical)
    if canonical:
        assert path.read_bytes().startswith(b'{"format":"capsched-checkpoint","payload":{')
    with pytest.raises(CheckpointError, match=message):
        Scheduler.restore(path)


def test_forged_column_values_are_checked_by_the_core(tmp_path: Path) -> None:
    # Well-formed columns holding an inconsistent state: the core's checks (format 1's)
    # apply to them the same way.
    def state(c):
        cols = c["requests"]["columns"]
        values = np.frombuffer(base64.b64decode(cols["state"]["base64"]), dtype="|u1").copy()
        values[0] = 9
        cols["state"] = _b64(values, "|u1")

    with pytest.raises(CheckpointError, match="bad state"):
        Scheduler.restore(_forge(tmp_path, state))

    def tenant(c):
        cols = c["requests"]["columns"]
        values = np.frombuffer(base64.b64decode(cols["tenant"]["base64"]), dtype="<u4").copy()
        values[-1] = 70_000
        cols["tenant"] = _b64(values, "<u4")

    with pytest.raises(CheckpointError, match=r"names tenant number 70000; the tenant table has 3"):
        Scheduler.restore(_forge(tmp_path, tenant))


def test_format_1_documents_still_restore_and_format_1_forgeries_are_still_refused(tmp_path: Path) -> None:
    # The same state as a format 1 document (the core's row export), signed: it restores
    # to the same state; and a row with a bad value in it is refused as before.
    s, _ = busy()
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    doc = _doc(path)
    rows = s._core.export_state()
    v1 = copy.deepcopy(doc)
    v1["version"] = 1
    v1["payload"]["core"] = json.loads(json.dumps(rows).replace("Infinity", '{"float": "inf"}'))
    (tmp_path / "v1.ckpt").write_text(_resign(v1))
    assert Scheduler.restore(tmp_path / "v1.ckpt")._core.export_state() == Scheduler.restore(path)._core.export_state()
    v1["payload"]["core"]["requests"][0]["priority"] = 2.0
    (tmp_path / "v1.ckpt").write_text(_resign(v1))
    with pytest.raises(CheckpointError, match="bad arrival, deadline or priority"):
        Scheduler.restore(tmp_path / "v1.ckpt")


def test_a_format_1_core_holding_columns_is_refused(tmp_path: Path) -> None:
    # A core of version 1 whose requests are an object of JSON lists: once converted
    # silently (floats truncated, strings parsed, no names check); now refused.
    path, doc = _busy_document(tmp_path)
    doc["version"] = 1
    core = doc["payload"]["core"]
    core["version"] = 1
    core["outcomes"] = np.frombuffer(base64.b64decode(core["outcomes"]["base64"]), "<u8").tolist()
    core["requests"] = {name: [] for name in REQUEST_COLUMNS}
    path.write_text(_resign(doc))
    with pytest.raises(CheckpointError, match="a version 1 core state lists its requests, got dict"):
        Scheduler.restore(path)


def test_a_format_1_file_holding_a_version_2_core_is_refused(tmp_path: Path) -> None:
    path, doc = _busy_document(tmp_path)
    doc["version"] = 1
    path.write_text(_resign(doc))
    with pytest.raises(CheckpointError, match="a format 1 file holds a version 2 core state"):
        Scheduler.restore(path)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("prompt_tokens", lambda a: a.astype(np.float64), r"request column 'prompt_tokens' must be a one-dimensional numpy array of uint32"),
        ("id", lambda a: a.reshape(1, -1), r"request column 'id' must be a one-dimensional numpy array of uint64"),
        ("tenant", lambda a: a.tolist(), r"request column 'tenant' must be a one-dimensional numpy array of uint32"),
        ("state", lambda a: a[:-1], r"request column 'state' has \d+ values, expected \d+"),
    ],
)
def test_the_core_takes_columns_only_as_exact_arrays(column, value, message) -> None:
    # The binding converts nothing: a column of another type, shape or kind is refused.
    s, _ = busy()
    state = s._core.export_state(columnar=True)
    assert state["version"] == 2
    state["requests"][column] = value(state["requests"][column])
    fresh = Scheduler([Device("a", capacity=2.0, pool="p"), Device("b")], max_batch_size=2)
    with pytest.raises(ValueError, match=message):
        fresh._core.import_state(state)
    state = s._core.export_state(columnar=True)
    state["outcomes"] = state["outcomes"].astype(np.int64)
    with pytest.raises(ValueError, match=r"outcomes must be a one-dimensional numpy array of uint64"):
        fresh._core.import_state(state)


def test_a_file_rewritten_with_non_ascii_characters_as_they_are_still_restores(tmp_path: Path) -> None:
    # Sorted and compact like the written file, but with ensure_ascii=False: the bytes
    # differ from the canonical dump the checksum is of, the document does not.
    s = Scheduler(["a"], clock=lambda: 0.0)
    rid = s.submit(InferenceRequest(prompt_tokens=5, tenant="café ☕"), now=0.0)
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    doc = json.loads(path.read_bytes())
    path.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    assert "café ☕".encode() in path.read_bytes()
    r = Scheduler.restore(path)
    assert r.status(rid) == "queued" and "café ☕" in r._tenants
    # A changed byte is still caught.
    path.write_bytes(path.read_bytes().replace("café".encode(), "cafe".encode()))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        Scheduler.restore(path)


@pytest.mark.parametrize("signed", [False, True], ids=["corrupt", "re-signed"])
@pytest.mark.parametrize("canonical", [False, True], ids=["general-path", "fast-path"])
def test_a_value_nested_almost_too_deep_for_json_is_refused_cleanly(tmp_path: Path, signed, canonical) -> None:
    # 900 levels parse (json.loads allows about 1000) but overflowed the recursive
    # encode/decode of the checksum's check: a RecursionError instead of CheckpointError.
    s = Scheduler(["a"], clock=lambda: 0.0)
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    doc = _doc(path)
    doc["payload"]["config"]["deep"] = None
    body = _canonical(doc["payload"]).decode().replace('"deep":null', '"deep":' + "[" * 900 + "]" * 900)
    digest = hashlib.sha256(body.encode()).hexdigest() if signed else "0" * 64
    sep = "" if canonical else " "
    path.write_text(f'{{"format":{sep}"capsched-checkpoint","payload":{body},"sha256":"{digest}","version":2}}')
    message = {
        (False, False): "is corrupt: its checksum does not match",
        (False, True): "is corrupt: its checksum does not match",  # (was a RecursionError)
        (True, False): "JSON nested too deeply",  # (was a RecursionError)
        (True, True): "unexpected keyword argument 'deep'",  # (the fast path decodes while parsing)
    }[signed, canonical]
    with pytest.raises(CheckpointError, match=message):
        Scheduler.restore(path)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_refused_on_either_path(tmp_path: Path, literal) -> None:
    s = Scheduler(["a"], clock=lambda: 0.0)
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    raw = path.read_bytes()
    assert b'"now":0.0' in raw
    body = raw[len(b'{"format":"capsched-checkpoint","payload":') : raw.index(b',"sha256":')]
    body = body.replace(b'"now":0.0', b'"now":' + literal.encode())
    for head in (b'{"format":"capsched-checkpoint","payload":', b'{"format": "capsched-checkpoint", "payload":'):
        path.write_bytes(head + body + b',"sha256":"' + hashlib.sha256(body).hexdigest().encode() + b'","version":2}')
        with pytest.raises(CheckpointError, match=f"is not strict JSON: it holds the literal {literal}"):
            Scheduler.restore(path)


def test_a_corrupt_ascii_file_is_refused_without_serialising_it_again(tmp_path: Path, monkeypatch) -> None:
    # The canonical dump is the fallback only for a file with non-ASCII bytes (the one
    # layout difference it exists for): a corrupt ASCII file is refused on its bytes.
    import capsched.checkpoint as ck

    s, _ = busy()
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"policy":"weighted"', b'"policy":"fcfs"'))
    calls = []
    monkeypatch.setattr(ck, "_canonical", lambda payload: calls.append(1) or b"")
    with pytest.raises(CheckpointError, match="checksum does not match"):
        Scheduler.restore(path)
    assert calls == []


def test_the_core_refuses_array_subclasses_as_columns() -> None:
    # A masked array's hidden values were imported as they were.
    s, _ = busy()
    state = s._core.export_state(columnar=True)
    state["requests"]["priority"] = np.ma.masked_array(state["requests"]["priority"], mask=True)
    fresh = Scheduler([Device("a", capacity=2.0, pool="p"), Device("b")], max_batch_size=2)
    with pytest.raises(ValueError, match=r"request column 'priority' must be a one-dimensional numpy array"):
        fresh._core.import_state(state)
