"""Recipes shipped with the SofT-GRPO plugins (countdown SFT, GRPO, SofT-GRPO; CPU and GPU sizes)."""
