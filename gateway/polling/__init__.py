"""Polling: the scheduler asks the poller to poll each terminal; punches are normalized and stored."""
