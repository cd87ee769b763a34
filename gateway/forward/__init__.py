"""Forwarding: drains the outbox upstream to the central (BKD) gateway."""
