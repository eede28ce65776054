"""Generated protobuf and gRPC modules for the ``chronoscore.v1`` API.

Regenerate them with ``python protos/generate.py``.
"""
