"""privfl's built-in plugins: ordinary plugin modules, listed in ``BUILTIN_PLUGINS``."""
