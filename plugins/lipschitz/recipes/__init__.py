"""Recipes shipped with the Lipschitz plugins (hookmix recipes)."""
