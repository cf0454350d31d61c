"""The PostgreSQL gateway: agents connect with their own identity, statements are parsed, decided by the SQL rules of
the policy files, recorded in the audit log and relayed to the real server with the real credential; the rows a write
changes are captured in the statement itself, for `undo` to restore them."""
