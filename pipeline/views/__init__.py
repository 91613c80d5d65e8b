"""Materialized views of the runtime's compacted topics, for readers such as the Admin API
and the CLI: services, limit rules, and the scheduler's state on disk."""
