"""Checkpoint converters: pure functions on state dicts, and file helpers.

:mod:`ssn_norm.convert.inflate_i3d` (2-D → 3-D) imports mmaction2 and is
imported on demand.
"""
from .files import (FILE_TARGETS, backbone_of_config, convert_checkpoint_file,
                    load_source, save_converted)
from .resnet import (FORMATS, TARGETS, ConversionError, ConversionReport,
                     check_loadable, convert_resnet, detect_format,
                     extract_state_dict)

__all__ = [
    'FILE_TARGETS', 'FORMATS', 'TARGETS', 'ConversionError',
    'ConversionReport', 'backbone_of_config', 'check_loadable',
    'convert_checkpoint_file', 'convert_resnet', 'detect_format',
    'extract_state_dict', 'load_source', 'save_converted'
]
