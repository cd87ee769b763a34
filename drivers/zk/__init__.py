"""ZKTeco binary protocol (port 4370) driver, built on pyzk."""
