"""Shared test helpers, imported as ``tests.support.<module>`` by tests, conftest files and benchmarks.

Modules: ``pg`` (PostgreSQL server for the session, throwaway databases), ``fleet`` (simulated terminals
and their ground truth), ``config`` (config documents, TOML files), ``gateway`` (an in-process daemon driven
by explicit polls, database views), ``clock`` (settable time), ``punches`` (Punch builders), ``cli`` (run
``fpgw`` in-process), ``webhook`` (a local alert receiver), ``central`` (the central API behind a TestClient),
``drivers`` (one harness over FakeDriver and ZkDriver), ``wait`` (bounded polling for a condition),
``proxy`` (a fault-injecting proxy to the central), ``bkd`` (a BKD client pulling by cursor), ``chaos`` (the
chaos/soak harness, also ``python -m tests.support.chaos``).
The fixtures built on them live in tests/conftest.py.
"""
