"""Fixtures of the push tests: a gateway with push terminals configured, and simulated push terminals."""
