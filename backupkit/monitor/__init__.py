"""Monitoring: the protection status model, Prometheus metrics, the status page, notifications."""
