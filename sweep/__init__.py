"""The sweep driver: configuration, planning, dispatch to Ray, and the ``sweep`` CLI."""
