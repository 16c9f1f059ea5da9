"""Optional third-party quantisation backends.

They live on the edgevit side (quant/ imports only torch and numpy) and hand back models in quant's
own format, so the same reports, checkpoints and runtimes take them. `brevitas_backend`: pip
install edgevit[brevitas].
"""
