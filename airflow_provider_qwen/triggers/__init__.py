"""Triggers: the deferrable waits of the operators and the sensor."""
