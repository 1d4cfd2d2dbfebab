"""Generated stubs for the ``nanovl.v1`` API. Do not edit them: change ``protos/`` and
run ``make protos`` (``scripts/gen_protos.py``).

Import the modules directly: ``from nanovl.v1 import inference_pb2, inference_pb2_grpc``.
"""
