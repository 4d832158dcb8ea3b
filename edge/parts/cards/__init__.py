"""Cards and authorisation: the hub's own RFID readers, token lists, roaming checks."""
