"""The suite's shared fixtures as pytest plugins, listed in tests/conftest.py's ``pytest_plugins``."""
