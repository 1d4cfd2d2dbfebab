"""``make bench``: nanovl measured against in-process ``AsyncLLM`` (no frontend) and vLLM's
frontends (its OpenAI HTTP server, its gRPC server (smg), its Rust frontend where
installed), on the tiny checkpoint, in one run.

Entry point: ``python -m bench.run`` (``--quick`` to iterate). Modules:

- :mod:`bench.config`: sides (and nanovl variants), workloads, levels, passes, the upload
  case, the profile points, the one engine configuration;
- :mod:`bench.plan`: the requests of every point (the load tester's own), identical for every side;
- :mod:`bench.passes`: how many passes each point gets (more where the fastest disagree);
- :mod:`bench.convert`: one nanovl request in each other side's form;
- :mod:`bench.loop`: the closed loop and per-request timing for the sides the load tester cannot drive;
- :mod:`bench.sides`: one module per side;
- :mod:`bench.servers`: ports, starting, probing and stopping servers; :mod:`bench.cpu`: CPU by process;
- :mod:`bench.profile`: py-spy (``--native``) and the split of its samples by owner;
- :mod:`bench.upload`: the chunked-upload case (a ~20 MB video through ``StreamGenerate``);
- :mod:`bench.baseline`: a saved run's figures, for the before/after table;
- :mod:`bench.results`, :mod:`bench.targets`, :mod:`bench.why`, :mod:`bench.report`,
  :mod:`bench.report_sections`, :mod:`bench.plots`: what is written.
"""
