"""The demo: the synthetic scroll and the bundled model."""
