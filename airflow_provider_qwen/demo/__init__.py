"""What the catalog demo draws; needs Pillow (the ``emulator`` extra), so the provider itself never imports it."""
