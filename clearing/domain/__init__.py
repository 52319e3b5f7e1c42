"""The domain: messages, events, the state, the fold, the margin model and its lifecycle.

Pure: it imports nothing of clearing outside this package (tests/test_layers.py). Most of its
modules are compiled with mypyc (clearing/native.py).
"""
