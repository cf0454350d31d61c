"""The web console: the audit log live, a request's detail and chain status, approvals and undo, behind one-time sign-in links."""
