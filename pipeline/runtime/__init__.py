"""The imperative shell: processes that pump Kafka records through the pure core."""
