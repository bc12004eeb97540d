"""The contract: what a plugin author and the core agree on (specs, hooks, registry, conformance)."""
