"""Engines: pure statistics on generic data (no SQL, no HTTP, no environment). See DESIGN.md."""
