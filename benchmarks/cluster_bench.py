"""Training and the corpus stage on a local Ray cluster, next to the local launcher, in one run.

    python -m benchmarks.cluster_bench [--steps 60] [--preset demo] [--rounds 3]

A Ray cluster of a head (no CPUs: the jobs' drivers) and two one-CPU worker nodes, each a node with
its own raylet, on this machine (llm_pipeline/local_ray.py). On the built-in corpus's shards:
(a) the demo model trained with ZeRO-2 at world size 2, the same config and steps, by `launcher: ray`
(a Ray job whose driver runs a Ray Train TorchTrainer of two workers, submitted as the asset submits
it) and by `launcher: deepspeed` (two ranks on this machine). Tokens/s is the summary's
steady_tokens_per_s (steps after the first, saves left out: the speed of training itself) and the
whole loop's; start-up is from the launch (the job's submission) to the first step's progress line.
(b) the corpus stage (build_corpus, executor ray, connected to the head's GCS: this machine is a node) on
the whole built-in corpus, on two worker nodes and on one, next to the local executor on this machine's cores.

Ray keeps to 127.0.0.1 only in a network of loopback alone: on a machine with other interfaces, run
as root, the benchmark re-runs itself in a private network namespace (`unshare -n`).

Last line: `ray/deepspeed launcher training tokens/s = X.XXx` (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.builtin_shards import builtin_shards
from llm_pipeline.corpus.build import CorpusConfig, build_corpus
from llm_pipeline.local_ray import LocalRayCluster, only_loopback
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import launch_command, launch_env, ray_job_command, ray_job_env
from llm_pipeline.train.model_config import preset_config

VOCAB = 4096
FIRST_STEP = "step 1/"  # the trainer's progress line for step 1 (log_every 1)


def train_config(run: Storage, shards: Storage, args) -> Storage:
    cfg = TrainConfig(
        shards_uris=(shards.uri,),
        run_uri=run.uri,
        model=preset_config(args.preset, VOCAB),
        steps=args.steps,
        zero_stage=2,
        dtype="fp32",
        checkpoint_every=args.steps,
        log_every=1,
        micro_batch=16,
        seq_len=128,
    )
    run.write_bytes("train_config.json", cfg.to_json().encode())
    return run


def on_deepspeed(run: Storage) -> tuple[dict, float]:
    launch = LaunchConfig(launcher="deepspeed", nproc=2)
    started = time.perf_counter()
    proc = subprocess.Popen(
        launch_command(launch, run.full("train_config.json")),
        env={**os.environ, **launch_env(launch)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first_step = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if first_step is None and FIRST_STEP in line:
            first_step = time.perf_counter() - started
    if proc.wait() != 0 or first_step is None:
        raise RuntimeError(f"the deepspeed launch failed (exit {proc.returncode})")
    return run.child("final").read_json("summary.json"), first_step


def on_ray(run: Storage, cluster: LocalRayCluster) -> tuple[dict, float]:
    """Submitted and waited on as the asset does (PipesRayJobClient: the status once a second, the logs streamed):
    asking the dashboard for the status and the whole log five times a second took CPU from the ranks."""
    import asyncio
    import threading

    from ray.job_submission import JobStatus, JobSubmissionClient

    launch = LaunchConfig(launcher="ray", num_workers=2, cpus_per_worker=1)
    client = JobSubmissionClient(cluster.job_address)
    started = time.perf_counter()
    job = client.submit_job(
        entrypoint=shlex.join(ray_job_command(launch, run.full("train_config.json"))),
        runtime_env={"env_vars": ray_job_env(launch)},
        entrypoint_num_cpus=0,
    )
    seen: list[float] = []

    async def watch_for_first_step() -> None:
        async for lines in client.tail_job_logs(job):
            if FIRST_STEP in lines:
                seen.append(time.perf_counter() - started)
                return

    watcher = threading.Thread(target=asyncio.run, args=(watch_for_first_step(),), daemon=True)
    watcher.start()
    while not client.get_job_status(job).is_terminal():
        time.sleep(1.0)
    watcher.join(timeout=10)
    if client.get_job_status(job) != JobStatus.SUCCEEDED:
        raise RuntimeError(f"the Ray job failed: {client.get_job_logs(job)[-3000:]}")
    if not seen:
        raise RuntimeError("the Ray job's log never showed its first step")
    return run.child("final").read_json("summary.json"), seen[0]


def corpus_seconds(out: Storage, max_bytes: int, cluster: LocalRayCluster | None = None) -> tuple[float, dict]:
    """The corpus stage on the cluster's nodes, or (no cluster) on this machine's two cores."""
    cfg = CorpusConfig(executor="ray" if cluster else "local", workers=2, max_bytes=max_bytes)
    started = time.perf_counter()
    manifest = build_corpus(cfg, out, ray_address=cluster.gcs_address if cluster else "")
    return time.perf_counter() - started, manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--preset", default="demo")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--corpus-mb", type=int, default=1000, help="MB of the built-in corpus for the corpus stage (default: all of it)")
    args = p.parse_args()
    if not only_loopback() and os.geteuid() == 0 and shutil.which("unshare") and not os.environ.get("CLUSTER_BENCH_NETNS"):
        inner = f"ip link set lo up && CLUSTER_BENCH_NETNS=1 exec {shlex.join([sys.executable, '-m', 'benchmarks.cluster_bench', *sys.argv[1:]])}"
        sys.exit(subprocess.call(["unshare", "-n", "bash", "-c", inner]))

    tmp = tempfile.mkdtemp(prefix="cluster-bench-")
    root = Storage(tmp)
    try:
        builtin_shards(root, VOCAB)
        shards = root.child("shards")
        cluster = LocalRayCluster(workers=2, cpus_per_worker=1)
        try:
            runs: dict[str, list[tuple[dict, float]]] = {"ray": [], "deepspeed": []}
            for r in range(args.rounds):  # interleaved: a slow spell of the machine hits both
                runs["ray"].append(on_ray(train_config(root.child(f"run-ray-{r}"), shards, args), cluster))
                runs["deepspeed"].append(on_deepspeed(train_config(root.child(f"run-deepspeed-{r}"), shards, args)))
            budget = args.corpus_mb * 10**6
            two_s, manifest = corpus_seconds(root.child("corpus-2"), budget, cluster)
        finally:
            cluster.shutdown()
        # A cluster of its own for one node (a node removed from the other is still being declared dead).
        single = LocalRayCluster(workers=1, cpus_per_worker=1)
        try:
            one_s, _ = corpus_seconds(root.child("corpus-1"), budget, single)
        finally:
            single.shutdown()
        local_s, _ = corpus_seconds(root.child("corpus-local"), budget)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"(a) {args.preset} model, ZeRO-2, fp32, world size 2, {args.steps} steps, micro_batch 16 x seq_len 128, on {os.cpu_count()} cores;"
    )
    print(f"    medians of {args.rounds} interleaved rounds")
    print(f"{'launcher':<12}{'steady tok/s':>14}{'loop tok/s':>12}{'start-up s':>12}{'peak RSS/rank MB':>18}   steady tok/s by round")
    steady = {}
    for name, results in runs.items():
        steady[name] = statistics.median(s["steady_tokens_per_s"] for s, _ in results)
        loop = statistics.median(s["tokens_per_s"] for s, _ in results)
        start = statistics.median(t for _, t in results)
        rss = max(max(s["peak_rss_bytes_per_rank"]) for s, _ in results) / 2**20
        rounds = ", ".join(f"{s['steady_tokens_per_s']:,.0f}" for s, _ in results)
        print(f"{name:<12}{steady[name]:>14,.0f}{loop:>12,.0f}{start:>12.1f}{rss:>18,.0f}   {rounds}")
    mb = manifest.bytes_read / 1e6
    print(f"(b) corpus stage, executor ray, {manifest.files_read} files, {mb:.1f} MB of the built-in corpus")
    for name, seconds in (("one worker node", one_s), ("two worker nodes", two_s), ("local executor, 2 workers", local_s)):
        print(f"{name:<28}{seconds:>7.1f} s {mb / seconds:>7.2f} MB/s")
    print(f"two nodes / one node: {one_s / two_s:.2f}x")
    ratio = steady["ray"] / steady["deepspeed"]
    print(f"ray/deepspeed launcher training tokens/s = {ratio:.2f}x")


if __name__ == "__main__":
    main()
