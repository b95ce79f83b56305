"""Recipes shipped with hookmix-ema (listed by `hookmix recipes`)."""
