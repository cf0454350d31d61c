"""Credentials: the encrypted vault, the injection kinds (header, basic, query, OAuth2, AWS SigV4) and their
spellings, which credential a request is bound to, OAuth2 consent and token refresh, and the scrubber that takes
secrets back out of what agents and logs see.

May import: the core and `net` (token requests go out as the proxy's own requests do). Nothing from the pipeline.
"""
