"""The hub's core: what every part plugs into (the charger interface first)."""
