"""Serial-line clocks (driver = "serial"): the reader service; see reader.py and docs/serial.md."""
