"""Offers: campaigns, the high-intent rule, decisions, coupons, holdout and uplift.

``decisions`` (OfferEngine), ``coupons`` (Coupons) and ``reports`` (Reports) are the domain
objects, each over its part of ``repository``; ``kinds`` names what a decision can be.
"""
