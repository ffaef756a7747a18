"""Talking to MySQL/MariaDB: connections, server facts, service control, sandboxes."""
