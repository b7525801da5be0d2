"""Loyalty analytics (issue 13, item 1): retention, repurchase, order value, cohorts.

``loyalty`` is the pure core (order lines in, figures out: standard library and
``service.money`` only, so the API's import path stays lean); ``orders`` reads the lines from
the service's database. The trainer's ``recoffer report`` reads a purchase file into the same
lines, so the API and the command agree to the last digit.
"""
