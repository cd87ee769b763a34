"""Public byte captures of real ZK terminals (sources named in each module)."""
