from .sparsestmax_radius_hook import SparsestMaxRadiusHook

__all__ = ['SparsestMaxRadiusHook']
