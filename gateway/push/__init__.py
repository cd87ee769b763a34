"""Push terminals (ADMS / "iclock"): the terminal calls the gateway over HTTP; see gateway.push.receiver."""
