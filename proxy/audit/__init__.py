"""The audit log: the write-ahead SQLite store with its HMAC chain (`store`) and the key and anchor kept outside the
database (`seal`).

May import: the core and `policy` (the limit charges a row carries).
"""
