"""fingerprint-gateway: polls attendance terminals, keeps a durable punch log, forwards it upstream."""

__version__ = "0.1.0"
