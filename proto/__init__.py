"""The gRPC contract (daxfs.v1): daxfs.proto and the code generated from it by `make proto`."""
