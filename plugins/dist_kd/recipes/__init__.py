"""Recipes shipped with the DIST plugin (see `hookmix recipes`)."""
