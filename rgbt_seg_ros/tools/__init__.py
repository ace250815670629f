"""The ``rgbt-seg`` subcommands: one module each, with ``HELP``, ``configure(parser)`` and ``main(args)``.

Shared option choices live here, free of heavy imports so that ``--help`` stays instant.
"""
BACKENDS = ("auto", "torch", "onnxruntime")  # = rgbt_seg_ros.inference.BACKENDS
BACKEND_HELP = ("inference backend: auto = onnxruntime for an .onnx file; for a .safetensors file the faster "
                "of torch and its ONNX export beside it (made by rgbt-seg export; both timed at start-up), "
                "else torch")
