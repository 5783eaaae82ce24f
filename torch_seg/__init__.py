"""Text-prompted segmentation: GroundingDINO (or CLIPSeg) boxes -> SAM 2 masks, in PyTorch.

The torchvision workaround is installed first so that every module of the package, and the libraries it
imports (groundingdino, sam2), can import torchvision on the CPU torch build.
"""
from torch_seg import _torchvision_compat  # noqa: F401  (must run before torchvision is imported)
