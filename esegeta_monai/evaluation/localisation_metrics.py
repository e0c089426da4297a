"""Placeholder: filled by the metric-catalogue work (issue 15)."""
