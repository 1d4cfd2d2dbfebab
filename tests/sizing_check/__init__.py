"""The seeded differential checker of nanovl's token accounting (``make sizing-check``).

nanovl's exact counts (``model.token_accounting``) and the way its server keys requests
for vLLM's processor cache (``model.processor_cache``) against vLLM's own multimodal
processor, in this process (no engine): random prompts of images, videos and audio for
every tiny variant, with vLLM's processor cache off and on (one cache per stream of
prompts, with items repeated so that it hits), each item's placeholder length and
embedding count compared, and images vLLM's processor cannot process required to be the
ones nanovl refuses. ``python -m tests.sizing_check --help``.
"""
