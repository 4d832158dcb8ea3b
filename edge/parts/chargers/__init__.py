"""Charger protocol parts: each registers its ``protocol`` names in
``edge.core.charger.PROTOCOLS`` when imported."""
