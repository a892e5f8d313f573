"""Performance benchmark of the service against the bundled fake Tinker."""
