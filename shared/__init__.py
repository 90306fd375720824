"""Code both sides use: the on-region format, region mapping, flush primitives, extents, errors."""
