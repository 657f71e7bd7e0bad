"""Application namespaces: one module per namespace, each with ``create(runtime)``."""
