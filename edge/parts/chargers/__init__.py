"""The chargers part (part.py) and its protocols: each registers its
``protocol`` names in ``edge.core.charger.PROTOCOLS`` when imported."""
