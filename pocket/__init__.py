"""Pocket: a small procedural landscape domain (generator, captions, classifier) for a tiny text-to-image model."""
