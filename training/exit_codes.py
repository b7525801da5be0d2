"""The exit codes of ``recoffer train`` (README "Exit codes"), read by the scheduler too.

A refused run is not a failure: the version is published but not promoted, the served model is
unchanged, and running again on the same data gives the same verdict, so a scheduler must not
retry it as a crash.
"""

from __future__ import annotations

OK = 0
FAILED = 1
BAD_INPUT = 2
REFUSED = 3  # the quality gate kept the current model

OUTCOMES = {OK: "ok", FAILED: "failed", BAD_INPUT: "bad_input", REFUSED: "refused"}
