"""The trainer's progress record: one line on a terminal, a bar in `make demo`'s console."""

import io
import logging

from llm_pipeline.assets.progress_relay import RECORD_ATTR
from llm_pipeline.demo_console import StageLines
from llm_pipeline.train.progress import Reporter, progress_line

RECORD = {"step": 40, "steps": 160, "loss": 5.87421, "lr": 2.9e-3, "tokens_per_s": 8563.2, "elapsed_s": 19.4, "eta_s": 67.1}


def test_the_trainer_alone_prints_its_progress_as_one_line_from_rank0_only(capsys):
    Reporter(None).progress(RECORD)
    Reporter(None, quiet=True).progress(RECORD)  # another rank
    assert capsys.readouterr().out == "step 40/160 loss 5.8742 lr 2.90e-03 8,563 tok/s elapsed 19s eta 67s\n"


def _record(message: str, **attrs) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"msg": message, "levelno": logging.INFO, "dagster_meta": {"orig_message": message, "step_key": "trained_checkpoint"}}
    )
    record.__dict__.update(attrs)
    return record


def test_the_demo_console_draws_its_bar_from_the_record_not_from_the_log_text():
    out = io.StringIO()  # not a terminal: a bar line at each quarter
    console = StageLines(out)
    console.emit(_record(progress_line(RECORD), **{RECORD_ATTR: RECORD}))
    console.emit(_record(progress_line({**RECORD, "step": 80})))  # the same text without the record: no bar
    assert out.getvalue() == f"  training  [{'#' * 7}{'.' * 23}] step 40/160  loss 5.8742  8,563 tok/s  eta 67s\n"
