"""The audit log: the write-ahead SQLite store with its HMAC chain (`store`), the key and anchor kept outside the
database (`seal`), and pruning by age (`prune`) with the signed gap records the chain is checked across (`gaps`).

May import: the core and `policy` (the limit charges a row carries).
"""
