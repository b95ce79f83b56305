"""Recipes shipped with the gkd plugin (the Countdown teacher SFT, on-policy and off-policy GKD students)."""
