"""Simulated ADMS/PUSH terminals: HTTP clients that push punches to a gateway (see terminal.py)."""
