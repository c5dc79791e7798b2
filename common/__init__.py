"""Helpers every package uses and none owns: durable file writes and process groups."""
