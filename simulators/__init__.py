"""Device simulators: wire-level fakes with their own codec. Imports nothing from drivers/ or pyzk."""
