"""Offline model compression: quantize a checkpoint into packed weights (``corral quantize``)."""
