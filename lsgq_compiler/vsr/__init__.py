"""The VSR workload that exercises the compiler: the shipped one-step VSR model, clips and
degradations, metrics, tiling, evaluation (``lsgq eval`` / ``compare``) and the demo.

The compiler itself (``lsgq_compiler.api``, ``capture``, ``passes``, ``backends``) never
imports this package; it is one user of the compiler, kept apart so the compiler's flow
(capture -> annotate/transform passes -> train -> lower) reads on its own.

    >>> from lsgq_compiler.vsr.models import load_tiny_vsr
"""
