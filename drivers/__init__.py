"""Device drivers: the only code that speaks to terminals. Imports nothing from gateway/."""
