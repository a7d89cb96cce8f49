"""Budgeted teacher queries: selectors as plain functions on index arrays (selection), the budget and
the active-distillation loop (loop)."""
