"""The flows driven by the supervisor's model: asking it (`llm`), `execute` (code for a task, reviewed, run jailed,
kept or undone), `undo --propose` (a compensation for a request no rule covers: `propose` checks it, purely;
`proposeflow` asks, runs and records it), and their record (`modellog`).

May import: every concern below the command line.
"""
