"""Built-in HTTP: the status page, /status JSON, /metrics, and the one uvicorn-in-a-thread server."""
