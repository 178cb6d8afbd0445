"""Checkpoint converters: pure functions on state dicts, and file helpers.

:mod:`ssn_norm.convert.inflate_i3d` (2-D → 3-D) imports mmaction2 and is
imported on demand.
"""
from .files import (FILE_TARGETS, KNOWN_RELEASES, Release, backbone_of_config,
                    convert_checkpoint_file, file_md5, known_release,
                    load_source, save_converted)
from .resnet import (FORMATS, TARGETS, ConversionError, ConversionReport,
                     check_loadable, convert_resnet, detect_format,
                     extract_state_dict)

__all__ = [
    'FILE_TARGETS', 'FORMATS', 'KNOWN_RELEASES', 'TARGETS', 'ConversionError',
    'ConversionReport', 'Release', 'backbone_of_config', 'check_loadable',
    'convert_checkpoint_file', 'convert_resnet', 'detect_format',
    'extract_state_dict', 'file_md5', 'known_release', 'load_source',
    'save_converted'
]
