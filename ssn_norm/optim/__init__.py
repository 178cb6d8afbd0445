from .ratio_clip import (AmpRatioClipOptimWrapper, RatioClipOptimWrapper,
                         SwitchableOptimWrapperConstructor,
                         ratio_logit_parameters)

__all__ = [
    'AmpRatioClipOptimWrapper', 'RatioClipOptimWrapper',
    'SwitchableOptimWrapperConstructor', 'ratio_logit_parameters'
]
