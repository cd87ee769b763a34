"""The store: the only package that runs SQL. Punches, devices, poll runs, outbox, health, alerts."""
