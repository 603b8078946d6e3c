"""Helpers shared by the test-suite and the parity-fixture scripts (no torch needed to import them)."""
