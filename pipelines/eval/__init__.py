"""Metrics of the field."""
