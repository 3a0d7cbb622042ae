"""The repo's own job as a reconstructable target, for tests that run it in real subprocesses
(the multiprocess executor, re-execution). Resources come from the environment, as in `dagster dev`."""

from llm_pipeline.definitions import defs


def llm_pipeline_job():
    return defs.resolve_job_def("llm_pipeline_job")
