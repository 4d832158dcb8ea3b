"""The hub's core: what every part plugs into (the charger interface first)."""

VERSION = "0.1.0"
