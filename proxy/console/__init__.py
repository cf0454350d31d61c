"""The web console: the audit log live, a request's detail and chain status, approvals and undo, over one token."""
