"""Recommendation feedback (issue 14): the signed id of each list shown (``token``), its
impressions, clicks and the carts and purchases credited to it, and the online figures per
model version, recipe, source, placement and experiment arm."""
