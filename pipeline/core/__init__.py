"""The pure core: decisions over frozen data with an injected clock; no I/O here."""
