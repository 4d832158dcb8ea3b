"""Site access: bookings, bays, barrier gates and number-plate cameras."""
