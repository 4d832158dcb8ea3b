"""Shared set-up for the hardware-in-the-loop tests (R-H1, R-H2)."""

import logging

# pymodbus logs every request it could not send, with a hex dump, as an
# error; the drivers report the same thing once as a device fault.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
