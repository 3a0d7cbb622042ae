"""The landing folder at scale: deliveries sealed once quiet and never listed again, a cursor the size
of the open deliveries, the previous release's cursor carried over, and ticks killed at any point
that neither lose nor double a file. Locally and on the S3 API server."""

import datetime as dt
import json
import math
import os
import shutil
import time

import dagster as dg
import pytest
import s3fs

from llm_pipeline.automation import new_corpus_sensor, new_files
from llm_pipeline.corpus.batches import read_batch
from llm_pipeline.corpus.landing import AUDIT_PER_TICK, LandingError, Ledger
from llm_pipeline.corpus.sources import list_sources
from llm_pipeline.definitions import make_resources
from llm_pipeline.resources import AutomationSettings, StorageResource

QUIET = 3600


def _write(folder, rel: str, text: str = "a document of some words " * 8) -> None:
    path = os.path.join(folder, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class Sensor:
    """The real sensor's look at one landing folder, on a clock the test moves."""

    def __init__(self, resources, uri: str):
        self.resources, self.uri, self.cursor, self.now = resources, uri, None, time.time()

    def look(self, later: float = 0.0):
        self.now += later
        look = new_files(self.resources["storage"], self.resources["automation"], self.uri, self.cursor, now=self.now)
        self.cursor = look.cursor
        return look

    def take(self) -> dict[str, str]:
        """Two looks: a file is taken once it is unchanged over two ticks."""
        self.look()
        return self.look().ready


def test_a_quiet_delivery_is_sealed_and_then_listed_only_by_the_audit(tmp_path):
    resources = make_resources(str(tmp_path / "root"))
    landing = str(tmp_path / "root" / "landing")
    for d in range(3):
        for i in range(20):
            _write(landing, f"delivery-{d}/part-{i // 10}/doc-{i}.txt", f"delivery {d} document {i} " * 10)
    sensor = Sensor(resources, landing)
    assert len(sensor.take()) == 60
    assert len(json.loads(sensor.cursor)["open"]) == 3

    # Quiet for less than the window: still open, still listed, nothing taken twice.
    look = sensor.look(later=QUIET - 10)
    assert look.listed == ["delivery-0", "delivery-1", "delivery-2"] and not look.ready and not look.sealed
    # Quiet for the window: sealed into the ledger; the cursor keeps no file of them.
    look = sensor.look(later=20)
    assert look.sealed == ["delivery-0", "delivery-1", "delivery-2"] and not look.ready
    assert json.loads(sensor.cursor)["open"] == {}
    ledger = Ledger(resources["storage"].root(), landing)
    assert sorted(ledger.index()) == ["delivery-0", "delivery-1", "delivery-2"]
    assert len(ledger.taken("delivery-1")) == 20
    look = sensor.look()
    assert look.listed == [] and not look.ready and len(sensor.cursor) < 250
    assert look.audited == ["delivery-0", "delivery-1", "delivery-2"] and not look.reopened  # compared with the ledger

    # A new delivery: only it is listed, and it is taken.
    _write(landing, "delivery-3/doc.txt")
    first = sensor.look()
    assert first.listed == ["delivery-3"] and first.arriving == 1
    assert list(sensor.look().ready) == ["delivery-3/doc.txt"]
    # A late delivery whose name sorts before the others is new too, and a file at the top is a delivery.
    _write(landing, "0-late/doc.txt")
    _write(landing, "single.jsonl", json.dumps({"text": "one document " * 10}) + "\n")
    assert sorted(sensor.take()) == ["0-late/doc.txt", "single.jsonl"]
    # A file written into a sealed delivery, however deep, is found by the audit and taken, the delivery named.
    _write(landing, "delivery-0/part-0/added-late.txt")
    look = sensor.look()
    assert look.reopened == ["delivery-0"] and look.arriving == 1
    assert list(sensor.look().ready) == ["delivery-0/part-0/added-late.txt"]
    assert "delivery-0" in sensor.look(later=QUIET).sealed
    assert len(ledger.taken("delivery-0")) == 21


def test_an_upload_in_flight_keeps_its_delivery_open(tmp_path):
    resources = make_resources(str(tmp_path / "root"))
    landing = str(tmp_path / "root" / "landing")
    _write(landing, "d/a.txt")
    _write(landing, "d/b.txt.part", "growing " * 10)
    sensor = Sensor(resources, landing)
    assert list(sensor.take()) == ["d/a.txt"]
    with open(os.path.join(landing, "d/b.txt.part"), "a") as f:
        f.write("more " * 10)
    assert not sensor.look(later=QUIET).sealed  # the upload moved within the window
    os.rename(os.path.join(landing, "d/b.txt.part"), os.path.join(landing, "d/b.txt"))
    assert list(sensor.take()) == ["d/b.txt"]
    assert sensor.look(later=QUIET).sealed == ["d"]
    assert sensor.look().listed == []


def test_the_previous_releases_cursor_is_carried_over_without_taking_anything_twice(tmp_path):
    resources = make_resources(str(tmp_path / "root"))
    landing = str(tmp_path / "root" / "landing")
    _write(landing, "d1/a.txt")
    _write(landing, "top.txt")
    stat = {rel: os.stat(os.path.join(landing, rel)) for rel in ("d1/a.txt", "top.txt")}
    old = json.dumps({"taken": {rel: f"{s.st_size}:{s.st_mtime_ns}" for rel, s in stat.items()}, "seen": {}})
    sensor = Sensor(resources, landing)
    sensor.cursor = old
    assert not sensor.take()
    _write(landing, "d1/b.txt")
    assert list(sensor.take()) == ["d1/b.txt"]


def _tick(resources, cursor):
    context = dg.build_sensor_context(cursor=cursor, resources={k: resources[k] for k in ("storage", "automation")})
    return new_corpus_sensor.evaluate_tick(context)


def test_a_tick_whose_cursor_was_never_kept_makes_the_same_batch_again(tmp_path):
    """The daemon adds the tick's partition before it stores the cursor: killed in between, the next
    tick sees the same files as new. They must come back as the same batch (adding it is a no-op)."""
    resources = make_resources(str(tmp_path / "root"))
    landing = tmp_path / "root" / "landing"
    _write(str(landing), "d/a.txt")
    seen = _tick(resources, None).cursor
    [first] = _tick(resources, seen).dynamic_partitions_requests
    while dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S") == first.partition_keys[0][:15]:
        time.sleep(0.01)  # into the next second: a fresh batch key would differ
    [again] = _tick(resources, seen).dynamic_partitions_requests  # the cursor of `seen` was the last one kept
    assert first.partition_keys == again.partition_keys
    assert len(os.listdir(tmp_path / "root" / "batches")) == 1
    assert list(read_batch(resources["storage"].root(), first.partition_keys[0])["files"]) == ["d/a.txt"]


def test_a_tick_killed_after_sealing_takes_nothing_twice(tmp_path):
    resources = make_resources(str(tmp_path / "root"))
    landing = str(tmp_path / "root" / "landing")
    _write(landing, "d/a.txt")
    sensor = Sensor(resources, landing)
    assert sensor.take()
    before = sensor.cursor
    assert sensor.look(later=QUIET).sealed == ["d"]
    sensor.cursor = before  # the sealing tick's cursor was lost: the ledger has it, the old cursor has it open
    look = sensor.look()
    assert not look.ready and look.sealed == ["d"]
    assert not sensor.take()


def _sealed_landing(tmp_path, deliveries: int):
    """A landing folder of `deliveries` folders and one file, all taken and sealed, its top level trusted."""
    resources = make_resources(str(tmp_path / "root"))
    landing = str(tmp_path / "root" / "landing")
    for d in range(deliveries):
        _write(landing, f"d{d:02}/part/doc.txt", f"delivery {d} " * 20)
    _write(landing, "single.jsonl", json.dumps({"text": "one document " * 10}) + "\n")
    sensor = Sensor(resources, landing)
    assert len(sensor.take()) == deliveries + 1
    assert len(sensor.look(later=QUIET).sealed) == deliveries + 1
    assert sensor.look(later=10).listed == []
    return resources, landing, sensor


def _made_again(landing: str) -> str:
    shutil.rmtree(os.path.join(landing, "d07"))
    _write(landing, "d07/part/doc.txt", "delivery 7 " * 20)  # the same bytes: a restore, a re-run upload
    return "d07/part/doc.txt"


def _replaced_by_rename(landing: str) -> str:
    _write(landing, ".single.jsonl.tmp", json.dumps({"text": "a newer document " * 10}) + "\n")
    os.replace(os.path.join(landing, ".single.jsonl.tmp"), os.path.join(landing, "single.jsonl"))
    return "single.jsonl"


def _written_deep(landing: str) -> str:
    _write(landing, "d13/part/deeper/new.txt", "a file added to a sealed delivery " * 5)
    return "d13/part/deeper/new.txt"


def _rewritten_in_place(landing: str) -> str:
    path = os.path.join(landing, "d19/part/doc.txt")
    before = os.stat(path)
    with open(path, "r+") as f:
        f.write("D")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and its mtime put back
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    return "d19/part/doc.txt"


# change -> whether the landing folder itself shows it (so the very next tick audits that delivery)
CHANGES = {_made_again: True, _replaced_by_rename: True, _written_deep: False, _rewritten_in_place: False}


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.__name__.strip("_"))
def test_new_data_in_a_sealed_delivery_is_taken_and_named(tmp_path, change):
    deliveries = 20
    resources, landing, sensor = _sealed_landing(tmp_path, deliveries)
    rel = change(landing)
    ticks = 1 if CHANGES[change] else math.ceil((deliveries + 1) / AUDIT_PER_TICK)
    looks = [sensor.look(later=10) for _ in range(ticks + 1)]  # found, then taken on the tick after
    reopened = [name for look in looks for name in look.reopened]
    assert reopened == [rel.split("/")[0]]
    assert [r for look in looks for r in look.ready] == [rel]
    assert sensor.look(later=QUIET).sealed == reopened
    for _ in range(ticks + 1):  # sealed again with what it holds now: nothing more to take
        look = sensor.look(later=10)
        assert not look.ready and not look.reopened and not look.arriving


def test_a_new_delivery_is_seen_when_the_landing_folders_mtime_is_put_back(tmp_path):
    resources, landing, sensor = _sealed_landing(tmp_path, 3)
    before = os.stat(landing)
    _write(landing, "late/doc.txt")
    os.utime(landing, ns=(before.st_atime_ns, before.st_mtime_ns))  # rsync -a, touch -r, a skewed NFS clock
    assert os.stat(landing).st_mtime_ns == before.st_mtime_ns
    assert list(sensor.take()) == ["late/doc.txt"]


def test_a_file_rewritten_with_size_and_mtime_put_back_is_not_read_as_landed(tmp_path):
    folder = str(tmp_path / "landing")
    _write(folder, "d/a.txt", "the words that landed " * 4)
    _write(folder, "d/b.txt", "words that stay as they were " * 4)
    landed = {f.rel: f"{f.size}:{f.version}" for f in list_sources(folder, "**/*").files}
    _rewritten = os.path.join(folder, "d/a.txt")
    before = os.stat(_rewritten)
    with open(_rewritten, "r+") as f:
        f.write("T")
    os.utime(_rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    listing = list_sources(folder, "**/*", only=landed)
    assert [f.rel for f in listing.files] == ["d/b.txt"]
    assert [(s.rel, s.reason) for s in listing.skipped] == [("d/a.txt", "changed_since_landing")]
    # A batch recorded by an earlier release (size:mtime) still reads its unchanged files.
    b = os.stat(os.path.join(folder, "d/b.txt"))
    assert [f.rel for f in list_sources(folder, "**/*", only={"d/b.txt": f"{b.st_size}:{b.st_mtime_ns}"}).files] == ["d/b.txt"]


def test_a_lost_ledger_index_is_rebuilt_and_a_lost_ledger_is_refused(tmp_path):
    resources, landing, sensor = _sealed_landing(tmp_path, 3)
    ledger = Ledger(resources["storage"].root(), landing)
    os.remove(os.path.join(ledger.folder.path, "index.json"))
    _write(landing, "new/doc.txt")
    look = sensor.look()
    assert look.notes == [f"the landing ledger's index was missing: rebuilt from its 4 delivery records in {ledger.folder.uri}/deliveries"]
    assert look.listed == ["new"] and not look.reopened
    assert list(sensor.look().ready) == ["new/doc.txt"]  # nothing sealed is taken again
    shutil.rmtree(ledger.folder.path)
    with pytest.raises(LandingError, match="holds 0 sealed deliveries, and this sensor sealed 4: it was deleted"):
        sensor.look()


@pytest.mark.e2e
def test_the_same_design_on_s3_with_thousands_of_objects(s3_endpoint, tmp_path):
    bucket = "llm-pipeline-test/landing-scale"
    resources = {"storage": StorageResource(root_uri=f"s3://{bucket}", s3_endpoint_url=s3_endpoint), "automation": AutomationSettings()}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    deliveries, per = 20, 100
    fs.pipe(
        {f"{bucket}/landing/d{d:03}/doc-{i:04}.txt": f"delivery {d} document {i}".encode() for d in range(deliveries) for i in range(per)}
    )
    sensor = Sensor(resources, f"s3://{bucket}/landing")
    assert len(sensor.take()) == deliveries * per
    assert len(sensor.look(later=QUIET).sealed) == deliveries
    quiet = sensor.look()
    assert quiet.listed == [] and not quiet.ready and len(sensor.cursor) <= 64 << 10
    fs.pipe_file(f"{bucket}/landing/d999/new.txt", b"one more document")
    assert sensor.look().listed == ["d999"]
    assert list(sensor.look().ready) == ["d999/new.txt"]
    assert len(sensor.cursor) <= 64 << 10
