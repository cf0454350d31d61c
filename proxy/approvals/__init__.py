"""Approvals: requests that wait for a person or a delay, chosen by what undo can take back, and the review queue."""
