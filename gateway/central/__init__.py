"""Central (BKD) mode: ingest API for office gateways, tokens, the pull API, exports, silent-gateway watch."""
