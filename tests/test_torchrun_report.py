"""torchrun's ChildFailedError report read back: each failed rank with its exit code and
signal, the root cause first (text as torch 2.13's torchrun prints it)."""

from workflow.agent.torchrun_report import worker_failures

REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-02_23:18:11
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 8381)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 8381
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_23:18:11
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 8380)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_every_failed_rank_root_cause_first():
    assert worker_failures("some training output\n" + REPORT) == [
        {"rank": 0, "exitcode": 1, "root_cause": True},
        {"rank": 1, "exitcode": -15, "signal": 15, "signal_name": "SIGTERM", "root_cause": False},
    ]


def test_a_worker_killed_without_a_signal_line_still_gets_its_signal_number():
    text = REPORT.replace("  traceback : Signal 15 (SIGTERM) received by PID 8381\n", "")
    assert worker_failures(text)[1] == {"rank": 1, "exitcode": -15, "signal": 15, "root_cause": False}


def test_no_report_no_failures():
    assert worker_failures("") == []
    assert worker_failures('{"step": 1, "loss": 0.5}\nTraceback (most recent call last):\nValueError: x\n') == []
