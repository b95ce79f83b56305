"""Recipes shipped with the CTKD plugin (see `hookmix recipes`)."""
