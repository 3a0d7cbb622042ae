"""The landing sensor's cost as the landing folder fills: N and 10N files already taken.

    python -m benchmarks.landing_bench [--n 100000] [--per-delivery 1000] [--repeats 5]

For N and 10N small files (deliveries of --per-delivery files each, as a crawl or an export drops
them: `delivery-00042/doc-000123.txt`), in a local folder under a temporary directory:

1. the sensor takes everything (two looks) and, an hour of quiet later, seals every delivery;
2. a tick with nothing new (median of --repeats; the collector run first, for what the set-up left):
   it lists no open delivery, and audits corpus/landing.py's AUDIT_PER_TICK sealed deliveries
   against the ledger, so its cost is set by the size of a delivery, not by how many were taken;
3. one new file in a new delivery (median of --repeats): the two ticks that see it and take it, on
   the sensor's clock 10 s apart (both list the landing folder's top level: its new identity is
   trusted only by a look made 2 s after it was first seen);
4. the cursor's size after each.

Next to it, the previous release's design on the same folder: every tick lists every file and the
cursor keeps every file taken (`list_sources` over the whole folder, and that cursor's size).

The ticks are the sensor's own code (`corpus/landing.py: scan`, with the ledger under a storage root
in the same temporary directory), timed in this process, without the Dagster daemon around them.

Last line: `sensor tick at 10x files = X.XXx` (the larger of the two ratios, 10N over N: the tick
with nothing new, and the ticks that take one new file).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import tempfile
import time

from llm_pipeline.corpus.landing import Ledger, scan
from llm_pipeline.corpus.sources import list_sources
from llm_pipeline.storage.folders import Storage

QUIET = 3600
TICK_SECONDS = 10  # new_corpus_sensor's minimum_interval_seconds


def land(folder: str, files: int, per_delivery: int) -> None:
    body = b"a small document, one per file, as crawled pages and code files come\n"
    for start in range(0, files, per_delivery):
        delivery = os.path.join(folder, f"delivery-{start // per_delivery:05}")
        os.makedirs(delivery)
        for i in range(start, min(files, start + per_delivery)):
            fd = os.open(os.path.join(delivery, f"doc-{i:07}.txt"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, body)
            os.close(fd)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(workdir: str, files: int, per_delivery: int, repeats: int) -> dict:
    landing, root = os.path.join(workdir, "landing"), os.path.join(workdir, "root")
    made, _ = timed(lambda: land(landing, files, per_delivery))
    ledger = Ledger(Storage(root), landing)
    cursor, now = None, time.time()

    def tick(later: float = 0.0):
        nonlocal cursor, now
        now += later
        look = scan(landing, {}, cursor, ledger, QUIET, now)
        cursor = look.cursor
        return look

    first, _ = timed(tick)
    take, look = timed(tick)
    assert len(look.ready) == files, (len(look.ready), files)
    seal, look = timed(lambda: tick(later=QUIET))
    assert len(look.sealed) == files // per_delivery
    quiet = []
    gc.collect()  # what the set-up left, not the sensor's work
    for _ in range(repeats):
        seconds, look = timed(tick)
        assert not look.ready and not look.listed
        quiet.append(seconds)
    quiet_cursor = len(cursor)

    new_file = []
    for r in range(repeats):
        os.makedirs(os.path.join(landing, f"delivery-new-{r}"))
        with open(os.path.join(landing, f"delivery-new-{r}", "doc.txt"), "w") as f:
            f.write(f"new document {r}\n")
        gc.collect()
        seen_s, look = timed(lambda: tick(later=TICK_SECONDS))
        assert look.arriving == 1
        # The second tick lists the top level once more: the folder's new identity is trusted from the third on.
        taken_s, look = timed(lambda: tick(later=TICK_SECONDS))
        assert list(look.ready) == [f"delivery-new-{r}/doc.txt"]
        new_file.append(seen_s + taken_s)
    new_cursor = len(cursor)

    # The previous design: every tick lists every file; the cursor holds every file taken.
    full_s, listing = timed(lambda: list_sources(landing, "**/*"))
    flat_cursor = len(json.dumps({"taken": {f.rel: f"{f.size}:{f.version}" for f in listing.files}, "seen": {}}, sort_keys=True))
    return {
        "files": files,
        "deliveries": files // per_delivery,
        "land_s": made,
        "first_look_s": first,
        "take_all_s": take,
        "seal_s": seal,
        "quiet_tick_s": statistics.median(quiet),
        "new_file_ticks_s": statistics.median(new_file),
        "cursor_bytes_quiet": quiet_cursor,
        "cursor_bytes_after_new": new_cursor,
        "previous_design_tick_s": full_s,
        "previous_design_cursor_bytes": flat_cursor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--per-delivery", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="where to land the files (default: a temporary folder)")
    args = parser.parse_args()
    results = []
    for files in (args.n, 10 * args.n):
        workdir = tempfile.mkdtemp(prefix="landing-bench-", dir=args.workdir)
        try:
            results.append(measure(workdir, files, args.per_delivery, args.repeats))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        r = results[-1]
        print(
            f"{r['files']:>9,} files in {r['deliveries']:,} deliveries: landed in {r['land_s']:.1f}s; first look {r['first_look_s']:.2f}s, "
            f"take all {r['take_all_s']:.2f}s, seal {r['seal_s']:.2f}s; tick with nothing new {r['quiet_tick_s'] * 1e3:.2f} ms, "
            f"one new file seen and taken {r['new_file_ticks_s'] * 1e3:.2f} ms; cursor {r['cursor_bytes_quiet']:,} B quiet, "
            f"{r['cursor_bytes_after_new']:,} B with the new delivery open",
            flush=True,
        )
        print(
            f"{'':>9}   previous design (every file listed, every file in the cursor): tick {r['previous_design_tick_s']:.2f}s, "
            f"cursor {r['previous_design_cursor_bytes'] / 1e6:.1f} MB",
            flush=True,
        )
    small, large = results
    quiet_ratio = large["quiet_tick_s"] / small["quiet_tick_s"]
    new_ratio = large["new_file_ticks_s"] / small["new_file_ticks_s"]
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(
        f"10x files: tick with nothing new {quiet_ratio:.2f}x, one new file {new_ratio:.2f}x; "
        f"largest cursor {max(r['cursor_bytes_after_new'] for r in results):,} B (limit 65,536)"
    )
    print(f"sensor tick at 10x files = {max(quiet_ratio, new_ratio):.2f}x")


if __name__ == "__main__":
    main()
