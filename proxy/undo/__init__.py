"""Undo: rule packs (`rules`), the pure planner from a recorded exchange to compensating steps (`plan`), and carrying
a plan out, journaled, through the pipeline (`run`) and for whole sessions (`session`); `policycheck`, which
checks policy files and undo packs together (an allow rule with no limit on a call no undo takes back); and `catalog`,
the census of what the shipped packs take back of each operation their vendors document.

May import: the core, `policy` (CEL, globs, the decision a step needs), `audit`, `credentials` and `sandbox` (file
runs of a session); `run` also the runtime, whose in-process proxy replays the steps.
"""
