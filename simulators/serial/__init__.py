"""Simulated serial-line time clocks (fpgw-sim kind = "serial"): see clock.py."""
