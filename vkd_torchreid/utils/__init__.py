"""The lowest layer beside ``compat``: file I/O that must not lose what the user had."""
