from .sparsestmax import ONE_HOT_TOL, is_one_hot, sparsemax, sparsestmax

__all__ = ['ONE_HOT_TOL', 'is_one_hot', 'sparsemax', 'sparsestmax']
