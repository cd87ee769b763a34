"""Device health: the pure tracker, the monitor service that feeds it, alerts and the daily report."""
