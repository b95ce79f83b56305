"""Recipes shipped with the ``sam`` plugin (``hookmix recipes``)."""
