"""The repository: object keys, the streaming codec and the catalog of manifests."""
