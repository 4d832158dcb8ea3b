"""The cloud link: MQTT up and down, the envelope, command signatures, the message schemas."""
