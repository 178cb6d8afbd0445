from .launch import (apply_test_outputs, apply_train_options,
                     setup_cpu_distributed, toolbox_of)

__all__ = [
    'apply_test_outputs', 'apply_train_options', 'setup_cpu_distributed',
    'toolbox_of'
]
