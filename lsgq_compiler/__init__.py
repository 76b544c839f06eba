"""lsgq-compiler: low-bit quantization of one-step diffusion VSR transformers as FX graph passes."""
__version__ = "0.1.0"
