"""protobench's own plugin: the built-in datasets and metrics (registered via entry point ``core``)."""
