"""Runnable examples of extending seqcsist-jax (see the README's "Adding a method")."""
