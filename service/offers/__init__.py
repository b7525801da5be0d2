"""Offers: campaigns, the high-intent rule, coupons, holdout and uplift."""
