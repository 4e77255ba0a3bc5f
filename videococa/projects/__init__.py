"""Projects: one package per system or study, built on the core (big_vision's `proj/` pattern).

A project registers what it adds to the core (pp ops, loss terms, model hooks; see
`videococa.extensions`) and its configs, under `configs/proj/<name>/`, list those modules in
`config.extensions`. The core never imports a project (`tests/test_layout.py` checks it).
"""
