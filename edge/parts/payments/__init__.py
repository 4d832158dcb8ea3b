"""Bank-card payments at the arch terminals: pre-authorisation, settlement, reconciliation."""
