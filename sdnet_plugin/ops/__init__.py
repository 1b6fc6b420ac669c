from .modulated_deform_conv import (BACKENDS, ModulatedDeformConv2d, available_backends, modulated_deform_conv2d,
                                    select_backend)

__all__ = ['BACKENDS', 'ModulatedDeformConv2d', 'available_backends', 'modulated_deform_conv2d', 'select_backend']
