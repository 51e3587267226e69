"""Everything that touches Triton: model configs, repository layout, Python-backend adapters,
server process management and clients."""
