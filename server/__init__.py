"""The host server: namespace, allocator, leases and the gRPC edge."""
