"""``make bench``: nanovl measured against in-process ``AsyncLLM`` (no frontend), vLLM's
OpenAI HTTP server and vLLM's own gRPC server, on the tiny checkpoint, in one run.

Entry point: ``python -m bench.run`` (``--quick`` to iterate). Modules:

- :mod:`bench.config`: sides, workloads, levels, the one engine configuration;
- :mod:`bench.plan`: the requests of every point (the load tester's own), identical for every side;
- :mod:`bench.convert`: one nanovl request in each other side's form;
- :mod:`bench.loop`: the closed loop and per-request timing for the sides the load tester cannot drive;
- :mod:`bench.sides`: one module per side;
- :mod:`bench.servers`: starting, probing and stopping servers; :mod:`bench.profile`: py-spy;
- :mod:`bench.results`, :mod:`bench.targets`, :mod:`bench.report`, :mod:`bench.plots`: what is written.
"""
